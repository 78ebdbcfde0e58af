"""Counting the text encoders' forward calls, on transformers' own classes (a library, not our code)."""


def record_text_encoder_calls(monkeypatch) -> list[str]:
    """A list that gets each CLIP / CLIP-with-projection / T5 forward call's class name, while the test runs."""
    import transformers

    calls: list[str] = []
    for cls in (transformers.CLIPTextModel, transformers.CLIPTextModelWithProjection, transformers.T5EncoderModel):
        original = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, *a, _original=original, **k: calls.append(type(self).__name__)
                            or _original(self, *a, **k))
    return calls
