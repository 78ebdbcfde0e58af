"""Captioning with a vision-language model, few-shot examples in the prompt.

- `style`: the caption style (system prompt, examples, instruction, sampling, post-processing).
- `prompt`: images prepared for the model and the chat messages built from a style.
- `postprocess`: clean a model's answer into a caption.
- `backends`: an OpenAI-compatible server (vLLM) or transformers in-process, same messages.
- `server`: the vLLM server the studio starts and stops itself.
- `batch`: caption a dataset, concurrently, never overwriting a person's work.
- `tiny_vlm`: the tiny random-weight vision-language model for the demo and tests.
"""
