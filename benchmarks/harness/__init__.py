"""What the benchmark scripts share: tiny models, byte corpora and batches, quiet Trainers and seeding, the
measurements every quality benchmark takes, and the output side (markdown tables, plots, run facts, JSON).

One concept per module: :mod:`.models`, :mod:`.data`, :mod:`.training`, :mod:`.measure`, :mod:`.output`, and
the one experiment runner (:mod:`.runner`), interleaved timer (:mod:`.timing`) and pretraining cache
(:mod:`.pretrain`) every benchmark runs on.
"""

from benchmarks.harness.data import batches, byte_corpus, random_ids_loader, text_module
from benchmarks.harness.measure import measured_sparsity, perplexity, val_loss
from benchmarks.harness.models import GPT2Module, LMOutput, TinyGPT, gpt2, llama
from benchmarks.harness.output import RESULTS, ROOT, facts, markdown_table, pyplot, spread, write_json
from benchmarks.harness.training import (
    DISTILL_TEMPERATURE,
    DISTILL_WEIGHT,
    MP_BEST,
    MP_LTH,
    Distilled,
    epoch_trainer,
    model_pruning,
    model_pruning_amount,
    quiet,
    seed_all,
    trainer,
)

__all__ = [
    "DISTILL_TEMPERATURE",
    "DISTILL_WEIGHT",
    "GPT2Module",
    "LMOutput",
    "MP_BEST",
    "MP_LTH",
    "RESULTS",
    "ROOT",
    "Distilled",
    "TinyGPT",
    "batches",
    "byte_corpus",
    "epoch_trainer",
    "facts",
    "gpt2",
    "llama",
    "markdown_table",
    "measured_sparsity",
    "model_pruning",
    "model_pruning_amount",
    "perplexity",
    "pyplot",
    "quiet",
    "random_ids_loader",
    "seed_all",
    "spread",
    "text_module",
    "trainer",
    "val_loss",
    "write_json",
]
