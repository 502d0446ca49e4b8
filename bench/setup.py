"""Build the cached fixtures (tiny base model, its perturbed "SHAD" copy) and load DeepSpeed's CPU ops
once, outside every timed launch."""

from common import models, say, warm_ops

if __name__ == "__main__":
    base, shad = models()
    warm_ops()
    say(f"setup: base {base}, shad {shad}")
