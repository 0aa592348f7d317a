"""The compiler: from an ONNX model to one signed package per hardware profile.

    compile.py       compile_model(): the pipeline the CLI and the demo call
    onnx_model.py    load and check the model; fix a symbolic batch dimension to 1
    calibration.py   calibration and held-out data (.npz/.npy), or random inputs when there is none
    passes/          one compression technique per module: a frozen config, a functional pass, a report
    fidelity.py      how closely a candidate follows the original: top-1 agreement, SQNR, cosine
    stats.py         parameters, size and a rough activation-memory peak of a model
    planner.py       choose a candidate per profile within the fidelity budget and the device's limits
    targets.py       runtime name -> exporter: onnxruntime, LiteRT (TFLite Micro still to come)
    tflite/          ONNX -> TFLite without TensorFlow (LiteRT schema bindings), quantized with ai-edge-quantizer
    compress.py      pipelines of compression passes (`edgefleet compress`); entropy.py measures artifact coding
    packaging.py     manifest, test vectors and tolerances for the chosen candidate
    report.py        the candidate table, as rows for JSON and the manifest, or as text
    model_zoo.py     small trained models made by code (digits MLP and CNN) and test architectures
    cli.py           `edgefleet compile`, `edgefleet convert` and `edgefleet keys`

docs/compiler.md explains the candidates, the fidelity budget and how a choice is made.
"""
