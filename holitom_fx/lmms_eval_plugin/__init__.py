"""HoliTom in lmms-eval (0.7.3): ``--model holitom --model_args base=NAME,...`` evaluates an lmms-eval model class
that keeps a transformers model in ``.model`` (``llava_hf``, ``qwen2_5_vl``, ...) with HoliTom on.

    python -m lmms_eval --model holitom --force_simple \\
        --model_args base=llava_hf,pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,device_map=cuda:0,retain_ratio=0.1 \\
        --tasks mvbench --batch_size 1

``base`` names the lmms-eval model; the HoliTomConfig fields (``retain_ratio``, ``tau``, ``inner_layer``, ...)
are HoliTom's settings; ``holitom=False`` switches HoliTom off (the baseline, same prompts and loading);
every other key goes to ``base``'s own class, which loads the checkpoint exactly as ``--model NAME`` would.
The loaded model is then compiled in place by :func:`holitom_fx.compile` (``.model``): the model's source
is not touched.

lmms-eval finds the model through the ``lmms_eval.models`` entry point (:func:`manifest`), as ``holitom``:
its chat form is the default, ``--force_simple`` picks the simple one; ``base`` is then resolved the same
way (its chat class unless ``--force_simple``, each falling back to the other where a base has one only).
``holitom_fx`` never imports this package, and importing it imports neither lmms-eval nor torch: lmms-eval
loads its entry points while ``lmms_eval.models`` imports, also for commands that never build a model.
"""

from __future__ import annotations

#: The model name registered with lmms-eval.
MODEL_NAME = "holitom"


def manifest():
    """The ``lmms_eval.models`` entry point: ``holitom``, in its chat and simple forms (``.model``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.model.HoliTom",
                         chat_class_path=f"{__name__}.model.HoliTomChat")
