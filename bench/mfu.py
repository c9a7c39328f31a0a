"""MFU of the full Bagpiper train step: ``bench/train_step.py`` with the performance
issue's defaults (8B width, 8 layers, seq 4096, one row per device, 989 TFLOP/s peak per
device as on H100/H200 bf16); one JSON line.

    python bench/mfu.py                                        # one GPU
    python bench/mfu.py --rows 2 runtime.attention=cudnn         # any train_step.py option
    python bench/mfu.py --config configs/tiny.yaml --layers 0 --seq 256 --rows 8 --peak 1e12   # CPU
"""

from train_step import main

if __name__ == "__main__":
    main(config="configs/8b.yaml", layers=8, seq=4096, rows=1, peak=989e12)
