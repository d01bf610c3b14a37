"""BPE: training with incrementally updated pair counts against the textbook loop, and streaming encoding.

    python benchmarks/bpe.py            # 130 KB of Tiny Shakespeare, vocabulary 500; a 5 MB file streamed
    python benchmarks/bpe.py --tiny     # checks the script in seconds

Training: ``reference_merges`` recounts every pair after each merge (the loop
chapter 8 derives by hand); ``BPETokenizer.train`` keeps the counts up to date
and touches only the pieces that hold the merged pair. Both start from the same
pre-tokenised pieces, and the table says whether they learn the same merges.
Hugging Face ``tokenizers`` (Rust) is timed too, as the speed of a well-built
trainer; it breaks ties between equally frequent pairs its own way.

Encoding: GPT-2's tokenizer encodes a file whole (``encode``) and line by line
(``encode_iterable``), with the peak of Python's memory for each
(``tracemalloc``); tiktoken (Rust) is the speed reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

from common import environment, print_environment, report

from llm_lib.data_sources import load_text
from llm_lib.tokenizer import BPETokenizer, GPT2Tokenizer, get_gpt2_encoding, reference_merges


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-kb", type=int, default=130, help="kilobytes of Tiny Shakespeare to train on")
    p.add_argument("--vocab", type=int, default=500)
    p.add_argument("--stream-mb", type=float, default=5.0, help="size of the file encoded whole and streamed")
    p.add_argument("--tiny", action="store_true", help="small sizes, to check the script quickly")
    p.add_argument("--json", metavar="PATH", help="also save the results there (see benchmarks/report.py)")
    return p.parse_args(argv)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed_and_peak(fn):
    """``(seconds, result, peak MB of Python allocations)`` of ``fn()``: timed in one call, and its
    memory traced in a second one (tracing slows every allocation down)."""
    seconds, out = timed(fn)
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    return seconds, out, peak


def training_rows(text: str, vocab: int) -> list[list]:
    num_merges = vocab - 256
    tok = BPETokenizer()
    fast_s, history = timed(lambda: tok.train(text, vocab, special_tokens=()))
    fast = [step.pair for step in history]

    def naive():
        words, weights = BPETokenizer()._training_pieces(text, ())  # the same pieces, counted the same way
        return reference_merges(words, weights, num_merges)

    naive_s, naive_merges = timed(naive)
    rows = [["train", "textbook loop: recount every pair after each merge (reference_merges)",
             naive_s, naive_s, "-", "(reference)"],
            ["train", "incremental pair counts (BPETokenizer.train)", fast_s, naive_s, "-",
             "yes" if fast == naive_merges else "NO"]]
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        return rows
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf_s, _ = timed(lambda: hf.train_from_iterator([text], trainer=trainer))
    rows.append(["train", "Hugging Face tokenizers BpeTrainer (Rust)", hf_s, naive_s, "-",
                 "not compared (breaks ties its own way)"])
    return rows


def streaming_rows(path: Path) -> list[list]:
    gpt2, tiktoken = GPT2Tokenizer(), get_gpt2_encoding()
    gpt2.encode_ordinary(path.read_text(encoding="utf-8"))  # warm-up: every row then finds its pieces cached

    def whole():
        return gpt2.encode_ordinary(path.read_text(encoding="utf-8"))

    def streamed():
        with open(path, encoding="utf-8") as f:
            return list(gpt2.encode_iterable(f))

    def counted():  # what a reader of a huge file does: consume the ids without keeping them all
        with open(path, encoding="utf-8") as f:
            return sum(1 for _ in gpt2.encode_iterable(f))

    whole_s, ids, whole_mb = timed_and_peak(whole)
    stream_s, stream_ids = timed(streamed)
    count_s, count, count_mb = timed_and_peak(counted)
    tk_s, tk_ids = timed(lambda: tiktoken.encode_ordinary(path.read_text(encoding="utf-8")))
    same = "yes" if ids == stream_ids == tk_ids and count == len(ids) else "NO"
    return [
        ["encode", "GPT2Tokenizer.encode_ordinary, file read whole", whole_s, whole_s, f"{whole_mb:.2f}",
         "(reference)"],
        ["encode", "GPT2Tokenizer.encode_iterable, by line, ids kept", stream_s, whole_s, "-", same],
        ["encode", "GPT2Tokenizer.encode_iterable, by line, ids counted", count_s, whole_s, f"{count_mb:.2f}",
         same],
        ["encode", "tiktoken encode_ordinary (Rust), file read whole", tk_s, whole_s, "-", same],
    ]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.tiny:
        args.train_kb, args.vocab, args.stream_mb = 10, 300, 0.05
    env = environment()
    print_environment(env)
    shakespeare = load_text("tinyshakespeare.txt")
    text = shakespeare[:args.train_kb * 1000]
    rows = training_rows(text, args.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.txt"
        size = int(args.stream_mb * 1e6)
        path.write_text((shakespeare * (size // len(shakespeare) + 1))[:size], encoding="utf-8")
        stream = streaming_rows(path)
    title = (f"BPE training to a vocabulary of {args.vocab} on the first {args.train_kb} KB of Tiny Shakespeare, "
             f"and GPT-2's tokenizer on a {args.stream_mb:g} MB text file; one run each, peak MB of Python "
             f"memory (tracemalloc)")
    headers = ["task", "implementation", "seconds", "speed vs reference", "peak MB", "same result"]
    rows = [[task, name, f"{s:.3f}", f"{ref / s:.1f}x", mb, same]
            for task, name, s, ref, mb, same in rows + stream]
    report(title, headers, rows, env, args.json, "bpe")


if __name__ == "__main__":
    main()
