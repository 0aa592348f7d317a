"""``edgefleet compile``, ``edgefleet convert`` and ``edgefleet keys``: thin commands over ``compile_model`` and ``agent.keys``.

The commands parse options, read the environment (``EDGEFLEET_HOME`` for the default signing
key), call the library, print its result as a table or JSON, and turn the library's errors into
user-facing messages. Nothing here decides anything about compression.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import click

from edgefleet.compiler.errors import CalibrationError, CompileError
from edgefleet.compiler.planner import DEFAULT_BUDGET, Budget
from edgefleet.compiler.report import render
from edgefleet.compiler.signing import default_key_path, ensure_key

log = logging.getLogger(__name__)

@click.command(name="compile")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--profile", "profiles", multiple=True, required=True, metavar="NAME",
              help="Hardware profile to compile for, by name or YAML path (repeatable; `edgefleet profiles` lists them).")
@click.option("--calibration", type=click.Path(path_type=Path, dir_okay=False), metavar="DATA",
              help="Real input samples (.npz keyed by input name, or .npy) for static int8; a quarter is held out "
                   "to measure fidelity. Without it, static int8 is skipped and fidelity is measured on random inputs.")
@click.option("--eval", "evaluation", type=click.Path(path_type=Path, dir_okay=False), metavar="DATA",
              help="Held-out samples to measure fidelity on (same format; a 'labels' array adds accuracy). "
                   "Default: the part held out of --calibration.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("."),
              show_default=True, help="Directory for the packages, written as <name>-<profile>.efpkg.")
@click.option("--key", "key_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Ed25519 private key to sign with. Default: $EDGEFLEET_HOME/keys/signing.key "
                   "(~/.edgefleet/keys/signing.key), created on first use.")
@click.option("--name", default=None, help="Package name (default: the model file's name without .onnx).")
@click.option("--version", "version", default="1", show_default=True, help="Package version string.")
@click.option("--min-agreement", type=click.FloatRange(0, 100), default=100 * DEFAULT_BUDGET.min_agreement,
              show_default=True, help="Fidelity budget for classifiers: minimum top-1 agreement with the original, in percent.")
@click.option("--min-sqnr", type=float, default=DEFAULT_BUDGET.min_sqnr_db, show_default=True,
              help="Fidelity budget for other models: minimum SQNR against the original, in dB.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of tables.")
def compile_command(
    model: Path,
    profiles: tuple[str, ...],
    calibration: Path | None,
    evaluation: Path | None,
    out_dir: Path,
    key_path: Path | None,
    name: str | None,
    version: str,
    min_agreement: float,
    min_sqnr: float,
    as_json: bool,
) -> None:
    """Compress an ONNX model for hardware profiles and write one signed package per profile.

    \b
    Candidates, each measured against the original on held-out samples, in the profile's
    first runtime (onnxruntime for Raspberry Pis and Linux hosts, LiteRT for phones):
      fp32                 the model as it is
      int8-static          weights and activations int8, calibrated on --calibration data (QDQ)
      int8-dynamic         int8 weights, activations quantized at run time (no data needed)
      litert-fp16          TFLite with float16 weights (phones' GPU delegates run fp16 fast)
      litert-int8-static   full-integer TFLite, calibrated (NPUs and CPUs run int8 fast)
      litert-int8-dynamic  TFLite with int8 weights, float activations
    Per profile, the chosen candidate meets the fidelity budget (top-1 agreement >= 99% for
    classifiers, else SQNR >= 30 dB) and the profile's storage and RAM; formats the profile runs
    fast come first, then static over dynamic quantization, then the smaller model. The table
    says why (docs/compiler.md has the details).

    \b
    Examples:
      edgefleet compile model.onnx --profile raspberry-pi-4 --calibration samples.npz -o out/
      edgefleet compile model.onnx --profile raspberry-pi-4 --profile raspberry-pi-5 --json
    """
    from edgefleet.compiler.compile import compile_model
    from edgefleet.hardware_profiles import ProfileError

    key = _signing_key(key_path)
    budget = Budget(min_agreement=min_agreement / 100, min_sqnr_db=min_sqnr)
    progress = not as_json and sys.stderr.isatty()
    try:
        results = compile_model(
            model, list(profiles), out_dir=out_dir, key_path=key, calibration=calibration, evaluation=evaluation,
            name=name, version=version, budget=budget, progress=progress,
        )
    except (CompileError, ProfileError) as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(exc), "type": type(exc).__name__}, indent=2))
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"ok": True, "model": str(model), "packages": [r.to_dict() for r in results]}, indent=2))
        return
    for i, r in enumerate(results):
        if i:
            click.echo()
        click.echo(render(r.plan, reference_size=r.reference_size_bytes))
        for note in r.notes:
            click.echo(textwrap.fill(note, width=100, initial_indent="  note: ", subsequent_indent="        "))
        click.echo(f"  wrote {r.package_path} ({r.choice}, signed by key {r.manifest.signer})")


def _signing_key(key_path: Path | None) -> Path:
    """The key to sign with; the default one is created on first use, and we say so loudly."""
    path = key_path if key_path is not None else default_key_path(os.environ)
    try:
        key = ensure_key(path, create=key_path is None)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if key.created:
        log.warning(
            "created a signing key at %s (key id %s); devices accept its packages only if they trust %s: "
            "copy it to each device and start the agent with --trust %s",
            key.path, key.key_id, key.public_path, key.public_path.name,
        )
    return key.path


@click.group()
def keys() -> None:
    """Make and inspect the Ed25519 keys that sign packages (devices install only what a trusted key signed)."""


@keys.command("generate")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def keys_generate(path: Path) -> None:
    """Write a new private key to PATH (mode 0600) and its public key to PATH with a .pub suffix.

    Keep PATH secret; copy the .pub to every device and start its agent with --trust FILE.pub.
    """
    from edgefleet.agent import keys as agent_keys

    try:
        private, public = agent_keys.generate(path)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    key_id = agent_keys.key_id(agent_keys.load_private(private).public_key())
    click.echo(f"key id {key_id}")
    click.echo(f"  private: {private} (keep it secret; sign with `edgefleet compile --key {private}`)")
    click.echo(f"  public:  {public} (give it to agents: `edgefleet agent --trust {public}`)")


@click.command(name="convert")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the TFLite model (.tflite).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DIMS",
              help="Static shape for an input with dynamic dimensions, e.g. input:1,3,224,224 (repeatable). "
                   "Without it a symbolic batch dimension becomes 1.")
@click.option("--quantize", "mode", type=click.Choice(["fp16", "dynamic", "int8", "int16x8", "int4"]), default=None,
              help="Quantize the TFLite model with ai-edge-quantizer: fp16 weights; dynamic (int8 weights, float "
                   "activations); int8 (full integer, calibrated); int16x8 (int16 activations, int8 weights, "
                   "calibrated); int4 (weight-only int4). Inputs and outputs stay float32.")
@click.option("--calibration", type=click.Path(path_type=Path, dir_okay=False), metavar="DATA",
              help="Real input samples (.npz keyed by input name, or .npy) for --quantize int8/int16x8 (required "
                   "there); a quarter is held out to measure fidelity, on random inputs otherwise.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of text.")
def convert_command(
    model: Path, out_path: Path, input_shapes: tuple[str, ...], mode: str | None, calibration: Path | None, as_json: bool
) -> None:
    """Convert an ONNX model to TFLite without TensorFlow, optionally quantize it, and check it.

    \b
    Inputs and outputs keep the ONNX names and shapes (NCHW stays NCHW at the interface); inside,
    convolutions run NHWC. Prints the operator count, the file size and the largest relative
    error of LiteRT against onnxruntime on 3 random inputs. With --quantize it also prints the
    quantized size and its fidelity against the fp32 original (top-1 agreement for classifiers,
    SQNR, the largest absolute error), measured in LiteRT. docs/converter.md lists the supported
    ops and the quantization modes.

    \b
    Examples:
      edgefleet convert model.onnx -o model.tflite
      edgefleet convert model.onnx -o model.tflite --input-shape input:1,3,224,224 --json
      edgefleet convert model.onnx -o model-int8.tflite --quantize int8 --calibration samples.npz
    """
    import onnx
    from google.protobuf.message import DecodeError

    from edgefleet.compiler import calibration as calibration_data
    from edgefleet.compiler import inference
    from edgefleet.compiler.tflite import convert
    from edgefleet.compiler.tflite.quantize import Mode, evaluate, quantize
    from edgefleet.compiler.tflite.verify import compare

    def fail(message: str, kind: str) -> click.ClickException:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": message, "type": kind}, indent=2))
        return click.ClickException(message)

    try:
        shapes = dict(_parse_input_shape(text) for text in input_shapes)
    except ValueError as exc:
        raise fail(str(exc), "UsageError") from None
    if mode is not None and Mode(mode).needs_calibration and calibration is None:
        raise fail(f"--quantize {mode} quantizes activations and needs --calibration DATA (an .npz of real input "
                   "samples keyed by input name, or .npy) to fit their ranges; or use --quantize fp16 or dynamic",
                   "UsageError")
    try:
        proto = onnx.load(str(model))
    except (OSError, DecodeError, ValueError) as exc:
        raise fail(f"{model}: cannot read an ONNX model: {exc}", "ModelError") from None
    try:
        result = convert(proto, input_shapes=shapes or None)
        data = calibration_data.load_dataset(calibration, result.inputs) if calibration is not None else None
        quantized = None
        if mode is not None:
            calib, held_out = calibration_data.split(data) if data is not None else (None, calibration_data.synthetic(result.inputs))
            quantized = quantize(result.tflite_bytes, mode, calibration=list(calib.feeds()) if calib else None)
            feeds = list(held_out.feeds())
            names = [s.name for s in result.outputs]
            fidelity = evaluate(inference.run_model(proto, feeds), quantized.tflite_bytes, feeds, names,
                                synthetic=held_out.synthetic, labels=held_out.labels)
    except CalibrationError as exc:
        raise fail(str(exc), type(exc).__name__) from None
    except CompileError as exc:
        raise fail(f"{model}: {exc}", type(exc).__name__) from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(quantized.tflite_bytes if quantized else result.tflite_bytes)
    comparison = compare(proto, result.tflite_bytes, result.inputs)
    report = result.report
    if as_json:
        payload = {
            "ok": True, "model": str(model), "out": str(out_path), **report.to_dict(),
            "inputs": [s.model_dump() for s in result.inputs], "outputs": [s.model_dump() for s in result.outputs],
            "samples": comparison.samples, "max_rel_error": comparison.max_rel_error, "errors": comparison.errors,
        }
        if quantized is not None:
            payload["quantization"] = {**quantized.to_dict(), "fidelity": fidelity.to_dict()}
        click.echo(json.dumps(payload, indent=2))
        return
    ops = ", ".join(f"{name} {count}" for name, count in report.op_counts.items())
    what = f"fp32, {report.operators} operators" if quantized is None else f"{mode}, converted to {report.operators} fp32 operators"
    size = quantized.size_bytes if quantized else report.size_bytes
    click.echo(f"wrote {out_path}: {what}, {size / 1024:.1f} KiB ({size} bytes)")
    click.echo(f"  operators: {ops}")
    for spec in result.inputs:
        click.echo(f"  input  {spec.name} {spec.dtype}{spec.shape}")
    for spec in result.outputs:
        click.echo(f"  output {spec.name} {spec.dtype}{spec.shape}")
    click.echo(f"  max relative error vs onnxruntime on {comparison.samples} random inputs: {comparison.max_rel_error:.2e}")
    if quantized is not None:
        on = f"{fidelity.samples} {'random' if fidelity.synthetic else 'held-out'} inputs"
        click.echo(f"  quantized ({quantized.recipe}): {quantized.float_size_bytes} -> {quantized.size_bytes} bytes "
                   f"({quantized.float_size_bytes / quantized.size_bytes:.2f}x smaller; constants "
                   f"{quantized.float_constant_bytes / max(quantized.constant_bytes, 1):.2f}x) in {quantized.seconds:.2f}s")
        agreement = f"top-1 agreement {100 * fidelity.top1_agreement:.2f}%, " if fidelity.top1_agreement is not None else ""
        sqnr = "exact" if fidelity.sqnr_db is None else f"{fidelity.sqnr_db:.1f} dB"
        click.echo(f"  fidelity vs fp32 on {on}: {agreement}SQNR {sqnr}, max abs error {fidelity.max_abs_error:.4g}")
        for note in quantized.notes:
            click.echo(textwrap.fill(note, width=100, initial_indent="  note: ", subsequent_indent="        "))
    for note in report.notes:
        click.echo(textwrap.fill(note, width=100, initial_indent="  note: ", subsequent_indent="        "))


def _parse_input_shape(text: str) -> tuple[str, list[int]]:
    """``NAME:1,3,224,224`` -> (NAME, [1, 3, 224, 224]); the name may itself contain ':'."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = [int(d) for d in dims.split(",")]
    except ValueError:
        shape = []
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise ValueError(f"--input-shape {text!r}: expected NAME:DIMS with positive integers, e.g. input:1,3,224,224")
    return name, shape
