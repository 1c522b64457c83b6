"""Build the Cython kernels in kernels/ into the pythia package (pythia._kernels).

-O3 always; OpenMP when a probe compile with -fopenmp succeeds, serial otherwise. No
-march=native (the wheel must run on other CPUs) and no -ffast-math (it would change float
semantics for the whole process, NaN checks included).
"""
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def openmp_works(compiler) -> bool:
    """Compile and link a tiny OpenMP program with the build's compiler."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(PROBE)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
        compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=["-fopenmp"])
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        unix = self.compiler.compiler_type == "unix"
        omp = unix and openmp_works(self.compiler)
        print(f"pythia: OpenMP {'enabled' if omp else 'not available, building serial kernels'}", file=sys.stderr)
        for ext in self.extensions:
            if unix:
                ext.extra_compile_args += ["-O3"]
            if omp:
                ext.extra_compile_args += ["-fopenmp"]
                ext.extra_link_args += ["-fopenmp"]
        super().build_extensions()


class BuildPy(build_py):
    """Ship the bundled corpus (top-level data/*.txt) inside the package as pythia/data/."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "pythia", "data")
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir("data")):
            if name.endswith(".txt"):
                self.copy_file(os.path.join("data", name), os.path.join(target, name))


def extensions():
    from Cython.Build import cythonize
    ext = Extension("pythia._kernels", ["kernels/_kernels.pyx"],
                    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    return cythonize([ext], compiler_directives={"language_level": 3})


setup(
    packages=["pythia", "pythia.kernels"],
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
