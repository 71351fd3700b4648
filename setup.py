"""The one compiled part: step 1 of the consume protocol for clean raw Avro values
(``invoice_batch/_avro_rows.c``). Everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no C compiler, or no OpenSSL
headers), the consumer reads every record the Python way, which gives the same rows,
more slowly.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "invoice_batch._avro_rows",
            ["invoice_batch/_avro_rows.c"],
            extra_compile_args=["-O2"],
            # The content hash, with the OpenSSL that hashlib uses (headers: libssl-dev).
            libraries=["crypto"],
            optional=True,
        )
    ]
)
