"""Names of the compared methods as the benchmarks write them into their JSON (the keys the tables read)."""

__all__ = ["MINITRON", "MP_BEST", "MP_LTH", "MP_ROW", "ONESHOT_MAG", "ONESHOT_WANDA", "SCRATCH_PRE"]

MP_LTH = "ModelPruning (LTH, default)"  # Lightning's ModelPruning with lottery-ticket rewinding
MP_BEST = "ModelPruning (no LTH)"  # ... without rewinding
MP_ROW = "ModelPruning (best of LTH / no LTH)"  # the better of the two per target
ONESHOT_MAG = "one-shot magnitude + FT"  # global |w| masks at the first step, held while fine-tuning
ONESHOT_WANDA = "one-shot Wanda + FT"  # Wanda masks from calibration batches, held while fine-tuning
MINITRON = "one-shot activation + FT + distillation (Minitron)"  # structured: shrunk once, then fine-tuned
SCRATCH_PRE = "small shape from scratch (pretraining + fine-tuning tokens)"  # structured: the small shape, retrained
