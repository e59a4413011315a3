"""dphrl-mini: RLVR with DPH-RL and MARA for small LoRA language models (see README.md)."""

import logging

# bitsandbytes, imported by peft, warns on CPUs with AVX512-BF16 that an optional kernel package
# ("kernels") is missing. Only a 4-bit model on CPU would use that kernel, and it falls back to its
# own code; for every other run the line is noise, so it is kept for errors only.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
