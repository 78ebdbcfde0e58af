"""Blind A/B: pairs from two checkpoints on the same prompt and seed, names hidden; the curator picks.

Which side each checkpoint appears on is balanced and shuffled, so the
curator cannot learn "A is always left". Picks are tallied in
`review/ab.json` beside the run (one record per checkpoint pair, every pick
kept with its prompt and seed), written atomically after every click.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from blk import atomic
from blk.errors import UserError

TALLY_FILE = "ab.json"
_LOCK = threading.Lock()


@dataclass(frozen=True)
class BlindPair:
    prompt: str
    seed: int
    left_is_a: bool  # hidden from the curator until the tally is shown


@dataclass
class Tally:
    a: str
    b: str
    a_wins: int = 0
    b_wins: int = 0
    ties: int = 0
    picks: list[dict] = field(default_factory=list)

    @property
    def votes(self) -> int:
        return self.a_wins + self.b_wins + self.ties

    def leader(self) -> str | None:
        if self.a_wins == self.b_wins:
            return None
        return self.a if self.a_wins > self.b_wins else self.b

    def sentence(self) -> str:
        if not self.votes:
            return "No picks yet."
        leader = self.leader()
        verdict = f"{leader} is preferred" if leader else "no preference yet"
        return f"{self.a}: {self.a_wins} · {self.b}: {self.b_wins} · ties: {self.ties} — {verdict}."


def blind_pairs(prompts: list[str], seeds: list[int], rng: random.Random | None = None) -> list[BlindPair]:
    """Every prompt × seed once, in shuffled order; A is on the left in half of them, at random.

    Balanced sides (not a coin per pair) so that a habit of picking "left"
    cannot favour either checkpoint.
    """
    rng = rng or random.SystemRandom()
    cases = [(p, int(s)) for p in (prompts or [""]) for s in seeds]
    sides = [index % 2 == 0 for index in range(len(cases))]
    rng.shuffle(sides)
    pairs = [BlindPair(prompt, seed, left) for (prompt, seed), left in zip(cases, sides)]
    rng.shuffle(pairs)
    return pairs


def _key(a: str, b: str) -> str:
    return f"{a} vs {b}"


def _read_all(folder: Path) -> dict:
    path = Path(folder) / TALLY_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (ValueError, OSError):
        raise UserError(f"{path} is damaged; move it aside to start a new tally.") from None


def read_tally(folder: Path, a: str, b: str) -> Tally:
    record = _read_all(folder).get(_key(a, b))
    return Tally(**record) if record else Tally(a, b)


def record_pick(folder: Path, a: str, b: str, pair: BlindPair, side: str) -> Tally:
    """Record 'left', 'right' or 'tie' for this pair; returns the updated tally."""
    if side not in ("left", "right", "tie"):
        raise ValueError(side)
    winner = "tie" if side == "tie" else ("a" if (side == "left") == pair.left_is_a else "b")
    with _LOCK:
        records = _read_all(folder)
        tally = Tally(**records[_key(a, b)]) if _key(a, b) in records else Tally(a, b)
        tally.a_wins += winner == "a"
        tally.b_wins += winner == "b"
        tally.ties += winner == "tie"
        tally.picks.append({"prompt": pair.prompt, "seed": pair.seed, "winner": winner,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        records[_key(a, b)] = asdict(tally)
        atomic.write_json(Path(folder) / TALLY_FILE, records)
    return tally
