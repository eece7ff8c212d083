# The cffi extension is declared here because pyproject.toml has no field for
# cffi_modules; everything else lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["csrc/build_fastpath.py:ffibuilder", "csrc/build_pcap.py:ffibuilder"])
