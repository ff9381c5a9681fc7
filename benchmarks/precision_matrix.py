"""The autocast matrix of tests/test_precision.py as figures: model dtype x autocast x input scaling, the fused
branch's max |error| against the float32 literal form for the forward and every gradient, with the test's
tolerance and the worst error / tolerance ratio of each row.

    python benchmarks/precision_matrix.py                  # CPU
    python benchmarks/precision_matrix.py --device cuda    # the same matrix on a GPU (benchmarks/gpu_check.sh)
"""

import argparse
import os
import sys
from pathlib import Path

COLUMNS = ("forward", "dx", "dA", "dB", "dK", "ds")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ["HYPLORA_TEST_DEVICE"] = args.device  # read by the test module on import
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch
    from test_precision import AUTOCASTS, DTYPES, branch_errors

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    print("max |fused - float32 literal| (tolerance in tests/test_precision.py)\n")
    print("| model | autocast | input scaling | " + " | ".join(COLUMNS) + " | worst error/tolerance |")
    print("|" + "---|" * (len(COLUMNS) + 4))
    worst = 0.0
    for model_dtype in DTYPES:
        for autocast_name in AUTOCASTS:
            for input_scaling in ("unit", "rms", "none"):
                errors = branch_errors(model_dtype, autocast_name, input_scaling)
                cells = [f"{errors[c][0]:.1e} ({errors[c][1]:.0e})" if c in errors else "-" for c in COLUMNS]
                ratio = max(error / tolerance for error, tolerance in errors.values())
                worst = max(worst, ratio)
                print(
                    f"| {model_dtype} | {autocast_name} | {input_scaling} | " + " | ".join(cells) + f" | {ratio:.2f} |"
                )
    print(f"\nworst error / tolerance over the matrix: {worst:.2f}")


if __name__ == "__main__":
    main()
