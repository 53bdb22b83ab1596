"""The sources of an export's trained character model: `charlm.py`, `sample.py`, `evaluate.py`.

Split from nas/export/templates.py (the cell module and the card) to keep each file short. Only
`CHARLM` has placeholders ($RNN, $imports: from names nas.export has already checked); the two
scripts are fixed text. All three need torch and the standard library only, and run with `python -I` (which puts
no folder on sys.path: charlm.py's folder is added by the scripts themselves).
"""

from __future__ import annotations

import string

CHARLM = string.Template('''\
"""The trained character-level language model of this export, in plain torch (no nas-rnn needed).

    ids (T, B) -> Embedding(V, E) -> $RNN(E, H, num_layers) -> Linear(H, V) -> logits (T, B, V)

`load()` gives the model (eval mode, model.pt's weights) and its `Vocab` (model.json). The scoring
protocol of nas-rnn (`bpc`): a text is read as consecutive segments of `segment` symbols, each from
a zero state after a burn-in of the `burn_in` symbols before it (read, not scored); every symbol but
the first is predicted once; bits per symbol = mean cross-entropy / ln 2.
"""

import json
import math
from pathlib import Path

$imports

HERE = Path(__file__).resolve().parent


class Vocab:
    """Symbols by id; id 0 is "<unk>", which every symbol outside the vocabulary maps to.

    text_format says how a file becomes symbols: "chars" (UTF-8 characters), "bytes" (one symbol
    per byte, spelled chr(b)), or "spaced" (characters separated by spaces, one sentence a line:
    the separators are not symbols and every line ends with one end-of-line symbol, "\\\\n")."""

    def __init__(self, symbols: list[str], text_format: str) -> None:
        if text_format not in ("chars", "bytes", "spaced"):
            raise ValueError(f"Vocab: expected text_format chars, bytes or spaced, got {text_format!r}")
        self.symbols, self.text_format = list(symbols), text_format
        self.index = {s: i for i, s in enumerate(self.symbols) if i > 0}

    def __len__(self) -> int:
        return len(self.symbols)

    def read(self, path: str | Path) -> str:
        """The symbols of a file, as nas-rnn reads a corpus of this format."""
        data = Path(path).read_bytes()
        if self.text_format == "bytes":
            return data.decode("latin-1")
        text = data.decode("utf-8")
        if self.text_format == "chars":
            return text
        lines = text.split("\\n")
        if lines[-1] == "":
            lines.pop()
        for number, line in enumerate(lines, 1):
            if any(len(token) > 1 for token in line.split()):
                raise ValueError(f"{path}: line {number}: spaced format expects single characters "
                                 "separated by spaces")
        return "".join("".join(line.split()) + "\\n" for line in lines)

    def encode(self, text: str) -> Tensor:
        return torch.tensor([self.index.get(c, 0) for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.symbols[i] for i in torch.as_tensor(ids).flatten().tolist())


class CharLM(nn.Module):
    """forward(ids: (T, B) int64, state=None) -> (logits (T, B, V), final state)."""

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, tied: bool = True) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.rnn = $RNN(embedding_size, hidden_size, num_layers, dropout)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tied:
            self.decoder.weight = self.embedding.weight

    def forward(self, ids: Tensor, state=None):
        out, state = self.rnn(self.drop(self.embedding(ids)), state)
        return self.decoder(self.drop(out)), state


def load(folder: str | Path = HERE, device: str = "cpu") -> tuple[CharLM, Vocab, dict]:
    """(model in eval mode, its vocabulary, model.json) of an export folder."""
    meta = json.loads((Path(folder) / "model.json").read_text(encoding="utf-8"))
    sizes = meta["sizes"]
    model = CharLM(sizes["vocab_size"], sizes["embedding_size"], sizes["hidden_size"], sizes["num_layers"],
                   sizes["dropout"], sizes["tied"])
    model.load_state_dict(torch.load(Path(folder) / "model.pt", map_location="cpu", weights_only=True))
    return model.to(device).eval(), Vocab(meta["vocabulary"], meta["text_format"]), meta


def segments(n: int, segment: int, max_chars: int | None = None) -> list[tuple[int, int]]:
    """(start, length) of the scored segments of n symbols: consecutive, together predicting ids[1:];
    with max_chars, ceil(max_chars / segment) whole segments, one from the middle of each equal part."""
    targets = n - 1
    if targets < 1 or segment < 1:
        raise ValueError(f"segments: expected >= 2 symbols and segment >= 1, got {n} and {segment}")
    whole = targets // segment
    cuts = [(k * segment, segment) for k in range(whole)]
    if targets % segment:
        cuts.append((whole * segment, targets % segment))
    k = -(-max_chars // segment) if max_chars is not None and max_chars < targets else whole + 1
    return cuts if k >= whole else [cuts[(2 * i + 1) * whole // (2 * k)] for i in range(k)]


@torch.no_grad()
def bpc(model: CharLM, ids: Tensor, segment: int, burn_in: int, batch_size: int = 16,
        max_chars: int | None = None, progress=None) -> tuple[float, int]:
    """(bits per symbol, symbols scored) of `model` over `ids` (1-D int64) by the protocol above."""
    device = next(model.parameters()).device
    keyed = [(min(burn_in, start), start, n) for start, n in segments(len(ids), segment, max_chars)]
    loss, done = 0.0, 0
    for key in dict.fromkeys((pre, n) for pre, _, n in keyed):  # a batch: one (burn-in, length)
        group = [start for pre, start, n in keyed if (pre, n) == key]
        pre, length = key
        for i in range(0, len(group), batch_size):
            begins = torch.tensor(group[i:i + batch_size]) - pre
            seq = ids[begins[:, None] + torch.arange(pre + length + 1)].t().contiguous().to(device)
            logits, _ = model(seq[:-1])
            per_char = nn.functional.cross_entropy(logits[pre:].float().flatten(0, 1),
                                                   seq[pre + 1:].flatten(), reduction="none")
            loss += per_char.double().sum().item()
            done += per_char.numel()
            if progress is not None:
                progress(done)
    return loss / done / math.log(2.0), done
''')


SAMPLE = '''\
"""Generate text with this export's trained character model: python sample.py [--chars 500] ...

Samples from softmax(logits / temperature) after reading the prime, as nas-rnn's sample.txt.
"""

import argparse
import sys
from pathlib import Path

import torch


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # python -I adds no folder to sys.path
    from charlm import load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chars", type=int, default=500, help="how many symbols to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="> 0; lower is more conservative")
    p.add_argument("--prime", default="\\n", help="text to read before sampling (default a newline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.temperature <= 0 or args.chars < 0:
        p.error(f"expected --temperature > 0 and --chars >= 0, got {args.temperature} and {args.chars}")
    model, vocab, _ = load(device=args.device)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        logits, state = model(vocab.encode(args.prime).view(-1, 1).to(args.device))
        out = []
        for _ in range(args.chars):
            probs = torch.softmax(logits[-1, 0].float().cpu() / args.temperature, dim=-1)
            out.append(int(torch.multinomial(probs, 1, generator=gen)))
            logits, state = model(torch.tensor([[out[-1]]], device=args.device), state)
    sys.stdout.write(args.prime + vocab.decode(out) + "\\n")


if __name__ == "__main__":
    main()
'''


EVALUATE = '''\
"""Score this export's trained character model on a text file, in bits per symbol, by nas-rnn's protocol.

    python evaluate.py input.txt --split val    # the validation split of a one-file corpus (90/5/5)
    python evaluate.py ptb.char.valid.txt       # a whole file

The defaults (format, segment, burn-in, max chars) are those the reported scores were made with
(model.json); README.md says which command reproduces which score.
"""

import argparse
import sys
import time
from pathlib import Path

SPLITS = {"all": (0, 100), "train": (0, 90), "val": (90, 95), "test": (95, 100)}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # python -I adds no folder to sys.path
    from charlm import Vocab, bpc, load

    model, vocab, meta = load()
    proto = meta["protocol"]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--split", choices=list(SPLITS), default="all",
                   help="score this part of the file, cut 90/5/5 by symbols as nas-rnn cuts one file")
    p.add_argument("--format", choices=["chars", "bytes", "spaced"], default=meta["text_format"],
                   help=f"how the file becomes symbols (default {meta['text_format']}, as in training)")
    p.add_argument("--segment", type=int, default=proto["segment"])
    p.add_argument("--burn-in", type=int, default=proto["burn_in"])
    p.add_argument("--max-chars", type=int, default=proto["max_chars"])
    p.add_argument("--batch-size", type=int, default=proto["batch_size"], help="speed only")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.segment < 1 or args.burn_in < 0 or args.batch_size < 1:
        p.error("expected --segment >= 1, --burn-in >= 0, --batch-size >= 1")
    model = model.to(args.device)
    try:
        text = Vocab(vocab.symbols, args.format).read(args.file)
    except (OSError, ValueError) as e:
        p.error(str(e))
    lo, hi = SPLITS[args.split]
    text = text[len(text) * lo // 100:len(text) * hi // 100]
    ids = vocab.encode(text)
    unknown = int((ids == 0).sum())
    last = [time.monotonic()]

    def progress(done: int) -> None:
        if time.monotonic() - last[0] >= 30:
            last[0] = time.monotonic()
            print(f"... {done:,} symbols scored", file=sys.stderr, flush=True)

    score, scored = bpc(model, ids, args.segment, args.burn_in, args.batch_size, args.max_chars, progress)
    print(f"{score:.6f} bits per symbol ({args.format}) on {args.file} [{args.split}]: {scored:,} of "
          f"{len(ids) - 1:,} symbols scored, segments of {args.segment} after a burn-in of {args.burn_in}, "
          f"{unknown:,} symbols outside the vocabulary")


if __name__ == "__main__":
    main()
'''
