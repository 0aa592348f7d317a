"""TFLite Micro (microcontrollers): full-integer int8 TFLite, checked and measured in the TFLM interpreter.

    micro.py       run a model in TFLM; measure_arena: the smallest tensor arena it runs in
    _probe.py      the child process that bisects the arena (TFLM may crash when it is short)
    candidates.py  tflm_candidate: convert, quantize to int8 with int8 I/O, measure fidelity, arena, flash
    c_source.py    model_data.cc / model_data.h: the model as an aligned C array for a firmware build
    target.py      TFLMTarget: the exporter ``targets.EXPORTERS`` registers for Runtime.TFLM

docs/tflm.md says what a microcontroller package holds and how to build it into firmware.
"""

from edgefleet.compiler.tflm.micro import TFLMError

__all__ = ["TFLMError"]
