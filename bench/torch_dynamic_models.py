"""Models written in PyTorch, exported to float ONNX and quantized with ONNX Runtime's
``quantize_dynamic`` (weights int8 or uint8, per tensor or per column; activations quantized at
run time by DynamicQuantizeLinear), with fixed seeds; then compared with ONNX Runtime under
``onnxruntime-cpu``.

    python bench/torch_dynamic_models.py OUT_DIR            # build every model x config, compare
    python bench/torch_dynamic_models.py OUT_DIR --only mlp --configs s8

One line per model: ``exact`` with the count of differing output elements (0 expected), or the
one-line refusal and how far the import got (quantized MatMuls before the first unsupported
node). torch is needed here only (``pip install torch==2.13.0``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SEED = 20261207
# name -> (weight type, per_channel)
CONFIGS = {"s8": ("QInt8", False), "s8pc": ("QInt8", True), "u8": ("QUInt8", False),
           "u8pc": ("QUInt8", True)}


def build(arch: str):
    """(module, input shape) of a named architecture with seeded random weights."""
    import torch
    from torch import nn
    torch.manual_seed(SEED)

    class Mlp(nn.Module):   # 2-D input: each Linear exports as Gemm -> MatMulInteger chain
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                        nn.Linear(32, 10))

        def forward(self, x):
            return self.layers(x)

    class TokenMlp(nn.Module):   # 3-D input: MatMul + Add per Linear, ReLU6 (Clip) between
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(24, 48), nn.Linear(48, 24)

        def forward(self, x):
            return self.fc2(torch.clamp(self.fc1(x), 0.0, 6.0))

    class Encoder(nn.Module):   # one post-norm encoder block: attention, LayerNorm, GELU MLP
        def __init__(self, dim=32, heads=2):
            super().__init__()
            self.heads = heads
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.proj = nn.Linear(dim, dim)
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.mlp1, self.mlp2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

        def forward(self, x):
            n, tokens, d = x.shape
            hd = d // self.heads

            def split(z):
                return z.reshape(n, tokens, self.heads, hd).transpose(1, 2)
            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            att = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * hd ** -0.5, -1)
            x = self.ln1(x + self.proj(torch.matmul(att, v).transpose(1, 2).reshape(n, tokens, d)))
            return self.ln2(x + self.mlp2(nn.functional.gelu(self.mlp1(x))))

    class Kws(nn.Module):   # keyword spotting: a GRU or LSTM over 20 frames of 10 features
        def __init__(self, cell):
            super().__init__()
            self.rnn = cell(10, 16, batch_first=True)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.fc(y[:, -1])

    archs = {"mlp": (Mlp, (4, 40)), "token_mlp": (TokenMlp, (2, 6, 24)),
             "encoder": (Encoder, (1, 8, 32)),
             "gru_kws": (lambda: Kws(nn.GRU), (1, 20, 10)),
             "lstm_kws": (lambda: Kws(nn.LSTM), (1, 20, 10))}
    cls, shape = archs[arch]
    return cls().eval(), shape


ARCHS = ("mlp", "token_mlp", "encoder", "gru_kws", "lstm_kws")


def export_float(arch: str, path: Path) -> tuple:
    import torch
    model, shape = build(arch)
    # an open batch dimension only where the graph has no shape arithmetic on it
    open_batch = {"input": {0: "n"}} if arch in ("mlp", "token_mlp") else None
    torch.onnx.export(model, (torch.randn(*shape),), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["output"], dynamic_axes=open_batch,
                      do_constant_folding=True)
    return shape


def quantize(float_path: Path, out_path: Path, config: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    weight, per_channel = CONFIGS[config]
    quantize_dynamic(str(float_path), str(out_path), weight_type=getattr(QuantType, weight),
                     per_channel=per_channel)


def compare(path: Path, shape) -> str:
    """One line: ORT parity of ``onnxruntime-cpu`` on seeded random inputs, or the refusal."""
    import onnx

    from mrq.errors import MrqError
    from mrq.onnx_import import import_onnx, load_onnx
    from mrq.pipeline import Pipeline
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.parity.ort_runner import run_ort
    model = load_onnx(str(path))
    try:
        pipe = Pipeline(import_onnx(model, str(path)), "onnxruntime-cpu", "native")
    except MrqError as err:
        nodes = list(onnx.load(str(path)).graph.node)
        where = next((i for i, n in enumerate(nodes) if (n.name or n.output[0]) in str(err)), None)
        total = sum(n.op_type == "MatMulInteger" for n in nodes)
        before = sum(n.op_type == "MatMulInteger" for n in nodes[:where]) if where is not None else 0
        return f"refused: {err} ({before} of {total} quantized MatMuls before it)"
    rng = np.random.default_rng(SEED)
    name = model.graph.input[0].name
    diff = total = 0
    for scale in (1.0, 0.1, 10.0):   # several input ranges, a fresh grid each
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        want = run_ort(path, {name: x})
        got = pipe.run({name: x}).outputs
        for key, value in want.items():
            diff += int(np.sum(got[key] != value))
            total += value.size
    return f"exact: {diff} of {total} output elements differ"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--only", help="comma-separated architectures (default: all)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    a = ap.parse_args(argv)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for arch in (a.only.split(",") if a.only else ARCHS):
        fp = out / f"{arch}.float.onnx"
        shape = export_float(arch, fp)
        for config in a.configs.split(","):
            qp = out / f"{arch}.dynamic.{config}.onnx"
            quantize(fp, qp, config)
            print(f"{qp.name}: {compare(qp, shape)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
