"""torch.hub entry points: ``torch.hub.load("<owner>/m3amba", "m3amba_base", ...)``.

Every registered variant is an entry point taking ``create_model``'s keyword arguments.
"""
dependencies = ["torch", "timm", "open_clip", "safetensors", "huggingface_hub"]

import m3amba as _m3amba


def _entry(name):
    def entry(pretrained: bool = False, **kwargs):
        return _m3amba.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = name
    entry.__doc__ = _m3amba.model_entrypoint(name).__doc__
    return entry


for _name in _m3amba.list_models():
    globals()[_name] = _entry(_name)
del _name
