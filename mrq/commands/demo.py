"""``mrq demo``: simulate the built-in example model under two profiles."""

EXAMPLES = """\
mrq demo
mrq demo --profiles nna-sym8 nna-sym8-pow2
"""


def register(sub):
    from mrq.commands.common import add_command
    p = add_command(sub, "demo", help="simulate a built-in example model under two profiles",
                    description="Simulate the small CNN shipped in mrq/data under each profile, print "
                    "every layer's fidelity against the float reference and where the profiles' "
                    "integer results differ; with onnxruntime installed, check the simulation under "
                    "this host's ONNX Runtime profile (onnxruntime-cpu on AVX-512 VNNI hosts, "
                    "onnxruntime-cpu-avx2 on AVX2 hosts, ...) against ONNX Runtime.",
                    examples=EXAMPLES)
    p.add_argument("--profiles", nargs="+", default=None,
                   metavar="PROFILE", help="profile names or YAML paths (default: this host's "
                   "ONNX Runtime profile, then tflite-int8)")
    p.set_defaults(func=run)


def run(args) -> int:
    from mrq.demo import run_demo
    return run_demo(profiles=args.profiles)
