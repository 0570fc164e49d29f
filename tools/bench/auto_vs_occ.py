"""Compare ``mpcompile`` ``--auto`` with onnxconverter-common's ``auto_convert_mixed_precision``.

Both run on the same models, the same inputs (``mpcompile.evaluate.inputs``, seed 0) and the same
tolerance (``|y - y_fp32| <= atol + rtol·|y_fp32|``, numpy.allclose's rule, which both use),
in one process. Printed per model and tool: evaluations (ONNX Runtime session builds, counted
by wrapping ``onnxruntime.InferenceSession``) and model runs (occ runs each session once; ours
runs the reference and most candidates on one shared session, the switchboard), wall time, FP16 FLOP share (``mpcompile.report``
estimates at the inputs' shapes; precision from stamped decisions or node dtypes), and whether
the result meets the tolerance in the FP16-faithful CPU evaluation (``mpcompile.evaluate``).
onnxconverter-common validates on ORT's CPU EP, which computes FP16 nodes lacking an FP16
kernel in FP32 and so can hide FP16 rounding and overflow; the last column shows where that
matters. It also runs a second time with its model runs replaced by the FP16-faithful
evaluation ("occ (faithful)": same bisection, honest checks), which compares the two searches
on equal terms.

Targets (issue 8): ours uses at most a fifth of its evaluations (session builds) and reaches at
least its FP16 FLOP share. The model-run ratio is printed too.

    python tools/bench/auto_vs_occ.py                       # the default model set
    python tools/bench/auto_vs_occ.py --models sensitive_cancellation mlp --rtol 1e-2 --atol 1e-2
    python tools/bench/auto_vs_occ.py --ours-static-blocks  # ours keeping the core's whole block list

Both tools get exactly the model, the inputs and the tolerance; neither gets extra options. occ
converts every op outside its short block list; ours under ``--auto`` converts the core's block
list's measurable ops too (Exp, Pow, reductions, ...: ``op_classes.MEASURABLE``), deciding them
by measurement. ``--ours-static-blocks`` runs ours with ``static_blocks=True`` (those ops FP32).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np
import onnx
import onnx_ir as ir

DEFAULT_MODELS = (
    "sensitive_pow_exp_chain",
    "sensitive_long_reduction",
    "sensitive_cancellation",
    "sensitive_two_regions",
    "sensitive_two_culprits",
    "sensitive_many_culprits",
    "sensitive_matmul_overflow",
    "sensitive_layernorm_huge_variance",
    "sensitive_deep_mixed",
    "sensitive_deep_overflow",
    "mlp",
    "resnet",
    "bert_encoder",
)


class SessionCounter:
    """Counts ``onnxruntime.InferenceSession`` constructions while active."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def active(self):
        import onnxruntime

        original = onnxruntime.InferenceSession
        counter = self

        class Counted(original):  # type: ignore[misc, valid-type]
            def __init__(self, *args, **kwargs):
                counter.count += 1
                super().__init__(*args, **kwargs)

        onnxruntime.InferenceSession = Counted
        try:
            yield self
        finally:
            onnxruntime.InferenceSession = original


def build_model(name: str) -> onnx.ModelProto:
    import models
    from models.sensitive import SENSITIVE

    return SENSITIVE[name]() if name in SENSITIVE else models.build(name)


def faithful_passes(
    model: onnx.ModelProto, original: onnx.ModelProto, feeds, rtol: float, atol: float
) -> bool:
    from mpcompile.evaluate import faithful
    from mpcompile.evaluate.inputs import cast_feeds

    reference = faithful.run_reference(original, feeds)
    converted = ir.from_proto(model)
    got = faithful.run(model, cast_feeds(converted, feeds))
    for name, want in reference.items():
        if not np.allclose(got[name].astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol):
            return False
    return True


def faithful_tensor_values(model: onnx.ModelProto, input_feed, output_names=None, sess_options=None):
    """Stand-in for occ's ``get_tensor_values_using_ort`` that runs the FP16-faithful evaluation."""
    from mpcompile.evaluate import faithful

    names = list(output_names) if output_names is not None else [o.name for o in model.graph.output]
    values = faithful.run(model, input_feed, intermediates=list(output_names) if output_names else False)
    return [values[name] for name in names]


@contextlib.contextmanager
def occ_validation(faithful: bool):
    """occ as shipped (ORT CPU EP sessions), or with its model runs replaced by faithful ones."""
    if not faithful:
        yield
        return
    import onnxconverter_common.auto_mixed_precision as amp

    original = amp.get_tensor_values_using_ort
    amp.get_tensor_values_using_ort = faithful_tensor_values
    try:
        yield
    finally:
        amp.get_tensor_values_using_ort = original


def run_occ(model: onnx.ModelProto, feeds, rtol: float, atol: float, faithful: bool = False) -> dict:
    from onnxconverter_common.auto_mixed_precision import auto_convert_mixed_precision

    counter = SessionCounter()
    started = time.perf_counter()
    error = None
    converted = None
    with counter.active(), occ_validation(faithful), contextlib.redirect_stdout(io.StringIO()):
        try:
            converted = auto_convert_mixed_precision(model, feeds, rtol=rtol, atol=atol, keep_io_types=True)
        except Exception as exc:  # occ raises ValueError when no candidate validates
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return {
        "model": converted,
        "evaluations": counter.count,
        "runs": counter.count,  # each of its sessions runs once
        "seconds": time.perf_counter() - started,
        "error": error,
    }


def run_ours(
    model: onnx.ModelProto,
    feeds,
    rtol: float,
    atol: float,
    budget: int,
    static_blocks: bool = False,
    switchboard: bool = True,
) -> dict:
    from mpcompile.auto import auto_convert

    counter = SessionCounter()
    started = time.perf_counter()
    with counter.active():
        result = auto_convert(
            model, inputs=feeds, rtol=rtol, atol=atol, budget=budget, static_blocks=static_blocks,
            switchboard=switchboard,
        )  # fmt: skip
    return {
        "model": result.model,
        "evaluations": counter.count,
        "runs": result.evaluations,
        "sessions_counted_by_auto": result.sessions,
        "seconds": time.perf_counter() - started,
        "error": None if result.passed else "did not meet the tolerance",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--rtol", type=float, default=1e-2)
    parser.add_argument("--atol", type=float, default=1e-2)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument(
        "--ours-static-blocks",
        action="store_true",
        help="ours keeps the core's whole block list FP32 (auto_convert(static_blocks=True))",
    )
    parser.add_argument(
        "--ours-no-switchboard",
        action="store_true",
        help="ours builds a session per candidate (auto_convert(switchboard=False)); same answers",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)

    from mpcompile.auto.flops import fp16_flop_share
    from mpcompile.evaluate.inputs import generate_inputs

    rows = []
    for name in args.models:
        original = build_model(name)
        feeds = generate_inputs(ir.from_proto(original), seed=0)[0]
        row: dict = {"model": name, "nodes": len(original.graph.node)}
        for tool, runner in (
            ("occ", lambda o=original, f=feeds: run_occ(o, f, args.rtol, args.atol)),
            ("occ_faithful", lambda o=original, f=feeds: run_occ(o, f, args.rtol, args.atol, faithful=True)),
            (
                "ours",
                lambda o=original, f=feeds: run_ours(
                    o,
                    f,
                    args.rtol,
                    args.atol,
                    args.budget,
                    args.ours_static_blocks,
                    not args.ours_no_switchboard,
                ),
            ),
        ):
            outcome = runner()
            converted = outcome.pop("model")
            if converted is not None:
                outcome["fp16_flop_share"] = fp16_flop_share(converted, feeds)
                outcome["faithful_pass"] = faithful_passes(converted, original, feeds, args.rtol, args.atol)
            row[tool] = outcome
        occ, ours = row["occ"], row["ours"]
        row["evaluations_target_met"] = ours["evaluations"] * 5 <= occ["evaluations"]
        row["share_target_met"] = ours.get("fp16_flop_share", 0.0) >= occ.get("fp16_flop_share", 0.0) - 1e-9
        fair = row["occ_faithful"]
        row["evaluations_target_met_faithful"] = ours["evaluations"] * 5 <= fair["evaluations"]
        row["runs_target_met_faithful"] = ours["runs"] * 5 <= fair["runs"]
        row["share_target_met_faithful"] = (
            ours.get("fp16_flop_share", 0.0) >= fair.get("fp16_flop_share", 0.0) - 1e-9
        )
        rows.append(row)
        print_row(row, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def print_row(row: dict, file) -> None:
    def cell(outcome: dict) -> str:
        share = outcome.get("fp16_flop_share")
        share_text = "-" if share is None else f"{share:6.1%}"
        faithful = {True: "yes", False: "NO", None: "-"}[outcome.get("faithful_pass")]
        text = (
            f"{outcome['evaluations']:4d} sessions {outcome['runs']:4d} runs {outcome['seconds']:6.2f} s  "
            f"FP16 FLOPs {share_text}  faithful pass {faithful}"
        )
        return text + (f"  [{outcome['error']}]" if outcome.get("error") else "")

    print(f"{row['model']} ({row['nodes']} nodes)", file=file)
    print(f"  occ (CPU EP)  : {cell(row['occ'])}", file=file)
    print(f"  occ (faithful): {cell(row['occ_faithful'])}", file=file)
    print(f"  ours          : {cell(row['ours'])}", file=file)
    for label, suffix in (("occ (CPU EP)", ""), ("occ (faithful)", "_faithful")):
        evaluations = "met" if row[f"evaluations_target_met{suffix}"] else "NOT met"
        share = "met" if row[f"share_target_met{suffix}"] else "NOT met"
        runs = ""
        if suffix:
            runs = f" (model runs <= 1/5 {'met' if row['runs_target_met_faithful'] else 'NOT met'})"
        print(
            f"  vs {label}: evaluations (session builds) <= 1/5 {evaluations}{runs}, FP16 FLOP share >= {share}",
            file=file,
        )
    file.flush()


if __name__ == "__main__":
    sys.exit(main())
