"""The ``fastbp`` command line: ``fastbp demo``, ``fastbp info``."""

import argparse
import sys
import time


def _demo(args):
    import numpy as np

    import fastbp

    rng = np.random.default_rng(args.seed)
    X = rng.uniform(-1, 1, size=(args.samples, 20))
    w = rng.normal(size=20)
    y = np.tanh(X @ w / 4) + 0.1 * np.sin(3 * X[:, 0]) + 0.01 * rng.normal(size=args.samples)
    net = fastbp.Network([20, 64, 64, 1], activations="relu", seed=args.seed)
    print(f"fastbp {fastbp.__version__}: training 20-64-64-1 relu on {args.samples:,} rows, "
          f"batch size 1, backend {net.backend}")
    for epoch in range(args.epochs):
        start = time.perf_counter()
        history = net.fit(X, y, epochs=1, batch_size=1, optimizer=fastbp.SGD(0.001))
        seconds = time.perf_counter() - start
        print(f"epoch {epoch + 1}/{args.epochs}: loss {history.history['loss'][0]:.5f}  "
              f"{args.samples / seconds:,.0f} samples/s")
    return 0


def _info(args):
    import fastbp

    fastbp.show_config()
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="fastbp", description="Train dense networks fast.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train on a generated regression set")
    demo.add_argument("--samples", type=int, default=20_000)
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    info = commands.add_parser("info", help="show the installed backends")
    info.set_defaults(run=_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
