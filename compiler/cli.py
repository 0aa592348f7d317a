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
from typing import TYPE_CHECKING

import click

from edgefleet.agent.transport import BrokerURL
from edgefleet.compiler.errors import (
    CalibrationError,
    CompileError,
    TargetNotImplemented,
)
from edgefleet.compiler.planner import DEFAULT_BUDGET, Budget
from edgefleet.compiler.report import render
from edgefleet.compiler.signing import default_key_path, ensure_key
from edgefleet.deploy.options import (
    broker_option,
    json_option,
    open_store,
    parse_optional_db,
)
from edgefleet.deploy.store_backends import StoreLocation

if TYPE_CHECKING:
    from edgefleet.compiler.search import Evaluator

log = logging.getLogger(__name__)

@click.command(name="compile")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--profile", "profiles", multiple=True, required=True, metavar="NAME",
              help="Hardware profile to compile for, by name or YAML path (repeatable; `edgefleet profiles` lists them).")
@click.option("--calibration", type=click.Path(path_type=Path), metavar="DATA",
              help="Real input samples (.npz keyed by input name, or .npy, or a folder of png/jpg images with a "
                   "preprocess.yaml saying how they become inputs; see `edgefleet convert --help`) for static int8; "
                   "a quarter is held out to measure fidelity. Without it, static int8 is skipped and fidelity is "
                   "measured on random inputs.")
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
@click.option("--data", "data", type=click.Path(path_type=Path, dir_okay=False), metavar="VAL.npz",
              help="Held-out data (.npz keyed by input name; a 'labels' array adds accuracy). Without --calibration a "
                   "quarter of it calibrates static int8 and the rest measures fidelity. Switches the search on.")
@click.option("--labels", "labels", type=click.Path(path_type=Path, dir_okay=False), metavar="LABELS.npy",
              help="Labels of the --data samples (one integer each) when the .npz has none.")
@click.option("--max-drop", "max_drop", metavar="PERCENT", default=None,
              help="Largest accuracy drop allowed against the original (with labels), else top-1 agreement drop, "
                   "e.g. 1% or 0.5. Replaces --min-agreement for classifiers. Switches the search on.")
@click.option("--objective", type=click.Choice(["latency", "size", "energy"]), default=None,
              help="What to minimise among candidates that meet the budget: estimated latency or energy per "
                   "inference on the profile (cost model), or model size. Default with the search: latency.")
@click.option("--max-latency-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Refuse candidates whose estimated latency on the profile exceeds this.")
@click.option("--max-size-kb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Refuse candidates whose model file exceeds this many KiB.")
@click.option("--time-budget", "time_budget", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="How long the search may build and measure candidates (the format stages always run). "
                   "Default: 120 s with the search on.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where measured candidates are cached (default: $EDGEFLEET_HOME/cache/compile).")
@click.option("--best-effort", is_flag=True,
              help="When no candidate meets every limit, package the one that misses them by least instead of failing.")
@click.option("--explain", is_flag=True, help="Print why each profile got its candidate, and write a Pareto plot (SVG) "
                                               "of the candidates next to the packages.")
@click.option("--fleet-db", "fleet_db", metavar="URL", default=None, callback=parse_optional_db,
              help="Telemetry store (SQLite path or postgresql:// URL) whose benchmark reports correct the cost "
                   "model's latency estimates per profile (median measured / estimated, for packages the store "
                   "knows or that are in -o).")
@click.option("--measure-on-fleet", is_flag=True,
              help="Benchmark each profile's 3 best candidates on an online device of that profile (from --fleet-db) "
                   "over MQTT (--broker and its TLS options), 3 interleaved rounds each, and choose by measured "
                   "latency instead of the estimate; candidates within measurement noise of the fastest count as "
                   "tied and the smaller one wins.")
@click.option("--measure-locally", is_flag=True,
              help="Benchmark every feasible candidate on this machine (7 interleaved rounds, as the agent benchmarks) "
                   "and choose by measured latency, ties within noise going to the smaller model. Use it when this "
                   "machine is a device of the profile: compiling on the Pi itself, or for generic-linux-x86_64 on "
                   "an x86-64 host. Refused for a profile of another CPU architecture or whose runtime is not "
                   "installed here (TFLite Micro): compile those in a separate run.")
@broker_option
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
    data: Path | None,
    labels: Path | None,
    max_drop: str | None,
    objective: str | None,
    max_latency_ms: float | None,
    max_size_kb: float | None,
    time_budget: float | None,
    cache_dir: Path | None,
    best_effort: bool,
    explain: bool,
    fleet_db: StoreLocation | None,
    measure_on_fleet: bool,
    measure_locally: bool,
    broker: BrokerURL,
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
      tflm-int8            full-integer TFLite for TFLite Micro (microcontrollers)
    Per profile, the chosen candidate meets the fidelity budget (top-1 agreement >= 99% for
    classifiers, else SQNR >= 30 dB) and the profile's storage and RAM; formats the profile runs
    fast come first, then static over dynamic quantization, then the smaller model. The table
    says why (docs/compiler.md has the details).

    \b
    The search (on with --data, --objective, --max-drop, --max-latency-ms, --max-size-kb or
    --time-budget) also tries structural passes before those formats: pruning, channel pruning,
    low-rank factorisation, weight clustering, each at several settings (a grid, or optuna for
    large spaces), within --time-budget, caching what it measured. It then picks, per profile,
    the candidate that minimises --objective (latency and energy estimated from the profile's
    throughput, bandwidth and power) among those within --max-drop, memory and the limits.
    With --measure-locally or --measure-on-fleet it chooses by latency measured on a device of
    the profile instead; candidates within measurement noise of the fastest count as tied, and
    the smaller model wins.

    \b
    Examples:
      edgefleet compile model.onnx --profile raspberry-pi-4 --calibration samples.npz -o out/
      edgefleet compile model.onnx --profile raspberry-pi-4 --profile raspberry-pi-5 --json
      edgefleet compile model.onnx --profile raspberry-pi-4 --profile android-flagship \\
          --profile nucleo-l4r5zi --data val.npz --max-drop 1% --objective latency --explain -o out/
      edgefleet compile model.onnx --profile generic-linux-x86_64 --data val.npz --measure-locally
    """
    from edgefleet.compiler.compile import compile_model
    from edgefleet.compiler.search import DEFAULT_TIME_BUDGET_S, SearchOptions
    from edgefleet.hardware_profiles import ProfileError

    if not model.is_file():
        # Checked before the default signing key is created: a typo in the path should leave nothing behind.
        hint = "it is a directory; pass the .onnx file inside it" if model.is_dir() else "check the path"
        raise click.ClickException(f"{model}: no such model file ({hint})")
    try:
        drop = _percent(max_drop) if max_drop is not None else None
        budget = Budget(min_agreement=min_agreement / 100, min_sqnr_db=min_sqnr, max_drop=drop, max_latency_ms=max_latency_ms,
                        max_size_bytes=int(max_size_kb * 1024) if max_size_kb is not None else None)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-drop") from None
    searching = any(v is not None for v in (data, objective, max_drop, max_latency_ms, max_size_kb, time_budget))
    search = None
    if searching:
        cache = cache_dir if cache_dir is not None else Path(os.environ.get("EDGEFLEET_HOME", Path.home() / ".edgefleet")) / "cache" / "compile"
        search = SearchOptions(time_budget_s=time_budget if time_budget is not None else DEFAULT_TIME_BUDGET_S,
                               cache_dir=cache, objective=objective or "latency")
    if measure_on_fleet and measure_locally:
        raise click.UsageError("--measure-on-fleet and --measure-locally both choose by measured latency: pick one")
    if measure_on_fleet and not fleet_db:
        raise click.UsageError("--measure-on-fleet finds devices in the telemetry store: pass --fleet-db URL too")
    corrections = _fleet_corrections(fleet_db, out_dir) if fleet_db else None
    evaluator = (_fleet_evaluator(fleet_db, broker) if measure_on_fleet and fleet_db
                 else _local_evaluator(profiles) if measure_locally else None)
    key = _signing_key(key_path)
    progress = not as_json and sys.stderr.isatty()
    try:
        results = compile_model(
            model, list(profiles), out_dir=out_dir, key_path=key, calibration=calibration, evaluation=evaluation,
            data=data, labels=labels, name=name, version=version, budget=budget, progress=progress, search=search,
            objective=(objective or "latency") if searching else objective,
            corrections=corrections, best_effort=best_effort, plot=explain, evaluator=evaluator,
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
        click.echo(render(r.plan, reference_size=r.reference_size_bytes, explain=explain or not searching))
        for note in r.notes:
            click.echo(textwrap.fill(note, width=100, initial_indent="  note: ", subsequent_indent="        "))
        click.echo(f"  wrote {r.package_path} ({r.choice}, signed by key {r.manifest.signer})")
        if r.plot_path is not None:
            click.echo(f"  plot  {r.plot_path}")
    if corrections:
        click.echo("cost model corrected from fleet reports: " + ", ".join(f"{p} x{f:.2f}" for p, f in sorted(corrections.items())))


def _percent(text: str) -> float:
    """'1%' or '1' -> 0.01 (a percentage), '0.5%' -> 0.005."""
    value = text.strip().removesuffix("%").strip()
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a percentage; write e.g. 1% or 0.5") from None
    if not 0 <= number <= 100:
        raise ValueError(f"{text!r} must be between 0% and 100%")
    return number / 100


def _fleet_evaluator(db: StoreLocation, broker: BrokerURL) -> Evaluator:
    """A ``FleetEvaluator`` over the devices the store last saw online; the fleet side is imported only here."""
    from edgefleet.deploy.fleet_evaluator import FleetEvaluator
    from edgefleet.deploy.store import StoreError

    try:
        with open_store(db, flag="--fleet-db") as store:
            return FleetEvaluator.from_store(store, broker=broker)
    except StoreError as exc:
        raise click.ClickException(f"--fleet-db: {exc}") from None


def _local_evaluator(profiles: tuple[str, ...]) -> Evaluator:
    """A ``LocalEvaluator``, refused up front (before any work) for profiles this machine cannot stand for."""
    from edgefleet.compiler.local_evaluator import LocalEvaluator, refusal
    from edgefleet.hardware_profiles import ProfileError, load_profile

    problems = []
    for name in profiles:
        try:
            problem = refusal(load_profile(name))
        except (ProfileError, TargetNotImplemented) as exc:
            raise click.ClickException(str(exc)) from None
        if problem is not None:
            problems.append(problem)
    if problems:
        raise click.UsageError("--measure-locally measures on this machine, which cannot stand for every profile:\n  "
                               + "\n  ".join(problems))
    return LocalEvaluator()


def _fleet_corrections(db: StoreLocation, out_dir: Path) -> dict[str, float]:
    """Per-profile latency corrections from a telemetry store, joined with the manifests of the packages
    it knows and of those in ``out_dir`` (the previous compile's); the fleet side is imported only here."""
    from edgefleet.deploy.cost_feedback import corrections_from_store
    from edgefleet.deploy.store import StoreError

    try:
        with open_store(db, flag="--fleet-db") as store:
            return {p: c.factor for p, c in corrections_from_store(store, package_dirs=[out_dir] if out_dir.is_dir() else []).items()}
    except StoreError as exc:
        raise click.ClickException(f"--fleet-db: {exc}") from None


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
@click.option("--not-before", metavar="DATE", help="Devices accept this key's signatures from this ISO 8601 date or "
              "time (UTC unless it says otherwise) on; it is written into the .pub.")
@click.option("--not-after", metavar="DATE", help="...and until this date or time; after it, the key verifies nothing.")
def keys_generate(path: Path, not_before: str | None, not_after: str | None) -> None:
    """Write a new private key to PATH (mode 0600) and its public key to PATH with a .pub suffix.

    Keep PATH secret; copy the .pub to every device and start its agent with --trust FILE.pub
    (or drop it into the agent's trusted-keys directory). To rotate: generate a new key, add its
    .pub to the devices beside the old one, sign with the new key, then `edgefleet keys revoke`
    the old one. See docs/security.md.
    """
    from edgefleet.agent import keys as agent_keys

    try:
        window = {name: _parse_date(value, option) for name, value, option in
                  (("not_before", not_before, "--not-before"), ("not_after", not_after, "--not-after"))
                  if value is not None}
        private, public = agent_keys.generate(path, **window)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    key_id = agent_keys.key_id(agent_keys.load_private(private).public_key())
    click.echo(f"key id {key_id}")
    click.echo(f"  private: {private} (keep it secret; sign with `edgefleet compile --key {private}`)")
    click.echo(f"  public:  {public} (give it to agents: `edgefleet agent --trust {public}`)")


@keys.command("list")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@json_option
def keys_list(paths: tuple[Path, ...], as_json: bool) -> None:
    """Show the keys an agent given PATHS as --trust would accept: id, validity window, revoked or not.

    PATHS are .pub files or trusted-keys directories (whose `revoked` file lists revoked key ids).

    \b
      edgefleet keys list /etc/edgefleet/trusted-keys
    """
    import time

    from edgefleet.agent.keys import TrustStore

    try:
        trust = TrustStore.from_paths(list(paths))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    now = time.time()
    rows = [{"key_id": k.key_id, "file": k.source, "window": k.window(),
             "status": "revoked" if trust.is_revoked(k.key_id) else "valid" if k.valid_at(now) else "outside window"}
            for k in trust.entries()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['key_id']}  {r['status']:<14}  {r['window']:<44}  {r['file']}")
    if not rows:
        click.echo("no keys")


@keys.command("revoke")
@click.argument("key_id")
@click.option("--key", "key_path", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True,
              help="Private key that signs the revocation: one the devices trust and that is not revoked "
                   "(the revoked key itself will do, if you still have it).")
@click.option("--reason", default="", help="Why, for the agents' logs.")
@broker_option
@json_option
def keys_revoke(key_id: str, key_path: Path, reason: str, broker: BrokerURL, as_json: bool) -> None:
    """Revoke signing key KEY_ID on every device: publish a signed revocation, retained on the broker.

    Agents that hear it, now or when they next connect, refuse everything KEY_ID signed from then
    on, and keep the revocation on disk: it cannot be taken back. To revoke without the broker,
    add KEY_ID to the `revoked` file of the agents' trusted-keys directory.

    \b
      edgefleet keys revoke 3f2a9c0d1e4b5a67 --key ~/.edgefleet/keys/signing-2027.key \\
          --reason "laptop stolen" --broker mqtt://fleet.example:1883
    """
    from edgefleet.agent import keys as agent_keys
    from edgefleet.agent.errors import TransportError
    from edgefleet.deploy.push import revoke_key

    try:
        revocation = revoke_key(broker, key_id, agent_keys.load_private(key_path), reason=reason)
    except (ValueError, TransportError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(revocation.model_dump(mode="json"), indent=2))
    else:
        click.echo(f"revoked key {key_id} (signed by key {revocation.signer}) on {broker}")


def _parse_date(value: str, option: str) -> float:
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date (2027-01-31 or 2027-01-31T12:00:00Z)",
                                 param_hint=option) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()  # a bare date is UTC


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
@click.option("--calibration", type=click.Path(path_type=Path), metavar="DATA",
              help="Real input samples for --quantize int8/int16x8 (required there): an .npz keyed by input name, "
                   "an .npy, or a folder of images (png/jpg) read with --preprocess. A quarter is held out to "
                   "measure fidelity, on random inputs otherwise.")
@click.option("--preprocess", metavar="SPEC",
              help="How images in a --calibration folder become inputs: comma-separated key=value "
                   "(color=rgb|bgr|gray, resize=WIDTHxHEIGHT, scale=1/255, mean=R,G,B, std=R,G,B, layout=nchw|nhwc) "
                   "or a .yaml file with those keys. Default: preprocess.yaml in the folder, else rgb, the model's "
                   "size, scale 1/255, no mean/std, nchw.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of text.")
def convert_command(
    model: Path, out_path: Path, input_shapes: tuple[str, ...], mode: str | None, calibration: Path | None,
    preprocess: str | None, as_json: bool,
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
      edgefleet convert model.onnx -o model-int8.tflite --quantize int8 --calibration images/ \\
          --preprocess resize=224x224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225
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
                   "samples keyed by input name, .npy, or a folder of images) to fit their ranges; or use --quantize "
                   "fp16 or dynamic", "UsageError")
    if preprocess is not None and (calibration is None or not calibration.is_dir()):
        raise fail("--preprocess describes how images become inputs; it needs --calibration FOLDER (of png/jpg images)",
                   "UsageError")
    try:
        proto = onnx.load(str(model))
    except (OSError, DecodeError, ValueError) as exc:
        raise fail(f"{model}: cannot read an ONNX model: {exc}", "ModelError") from None
    try:
        result = convert(proto, input_shapes=shapes or None)
        data = (calibration_data.load_dataset(calibration, result.inputs, preprocess=preprocess)
                if calibration is not None else None)
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
