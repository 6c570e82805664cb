"""``mrq demo``: simulate the built-in example model under two profiles."""


def register(sub):
    p = sub.add_parser("demo", help="simulate a built-in example model under two profiles")
    p.add_argument("--profiles", nargs="+", default=["onnxruntime-cpu", "tflite-int8"])
    p.set_defaults(func=run)


def run(args) -> int:
    from mrq.demo import run_demo
    return run_demo(profiles=args.profiles)
