"""Everything but one line is in setup.cfg. That line: configs/ ships inside the package as
``sandbox.packaged_configs`` (``sandbox-init`` copies it out), mapped at build time with package_dir, so
that a non-editable install has the configs while the repository keeps them where they are."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["sandbox", "sandbox.*"]) + ["sandbox.packaged_configs"],
      package_dir={"sandbox.packaged_configs": "configs"})
