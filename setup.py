"""The one compiled part of bufconv (pyproject.toml holds everything else).

`bufconv.buffer._pixelpass`: the online buffer's one-pass range check and uint8 conversion.
Optional: where it does not build (no C compiler), bufconv installs and runs the same
conversion in numpy (`bufconv.buffer.pixelpass.COMPILED` says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bufconv.buffer._pixelpass",
            ["bufconv/buffer/_pixelpass.c"],
            # -ffp-contract=off: the product is rounded before the sum, as numpy does (no FMA)
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
