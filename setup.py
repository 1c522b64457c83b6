"""Build the Cython kernels in kernels/ into the pythia package (pythia._kernels).

-O3 always; OpenMP when a probe compile with -fopenmp succeeds, serial otherwise. No
-march=native (the wheel must run on other CPUs) and no -ffast-math (it would change float
semantics for the whole process, NaN checks included). -fno-trapping-math only tells gcc that
nobody reads the floating-point exception flags inside the kernels, so it may compute both
sides of a branch and vectorise it; it changes no computed value. -fno-math-errno lets sqrtf
vectorise (libm would otherwise be called to set errno for a negative argument); the result,
NaN for a negative argument, is the same.

On x86-64 the same source is built a second time as pythia._kernels_avx2 with -mavx2 -mfma
(8-wide vectors and fused multiply-add, when the compiler accepts the flags); pythia.kernels
loads it only on a CPU that reports AVX2 and FMA, so the baseline build still runs everywhere.
The int8 kernels get a third build, pythia._quant_vnni, with AVX-512 VNNI's flags added
(vpdpbusd); pythia.quant loads it only on a CPU that reports those extensions. A compiler that
refuses a variant's flags skips that variant; the builds below it still serve.
"""
import os
import shutil
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

PROBE_OPENMP = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
PROBE_AVX2 = "#include <immintrin.h>\nint main(void) { __m256 a = _mm256_set1_ps(1.f); a = _mm256_fmadd_ps(a, a, a); return (int)_mm256_cvtss_f32(a) - 2; }\n"
PROBE_VNNI = ("#include <immintrin.h>\nint main(void) { __m256i a = _mm256_set1_epi8(1); "
              "a = _mm256_dpbusd_epi32(a, a, a); return _mm256_extract_epi32(a, 0) - 5; }\n")
SIMD_FLAGS = ["-mavx2", "-mfma"]
VNNI_FLAGS = SIMD_FLAGS + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]


def compiles(compiler, code: str, flags: list[str]) -> bool:
    """Compile and link a tiny program with the build's compiler and `flags`."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        unix = self.compiler.compiler_type == "unix"
        omp = unix and compiles(self.compiler, PROBE_OPENMP, ["-fopenmp"])
        simd = unix and compiles(self.compiler, PROBE_AVX2, SIMD_FLAGS)
        vnni = simd and compiles(self.compiler, PROBE_VNNI, VNNI_FLAGS)
        print(f"pythia: OpenMP {'enabled' if omp else 'not available, building serial kernels'}; "
              f"AVX2/FMA variant {'built' if simd else 'skipped'}; "
              f"AVX-512 VNNI variant {'built' if vnni else 'skipped'}", file=sys.stderr)
        if not simd:
            self.extensions = [e for e in self.extensions if not e.name.endswith("_avx2")]
        if not vnni:
            self.extensions = [e for e in self.extensions if not e.name.endswith("_vnni")]
        for ext in self.extensions:
            if unix:
                ext.extra_compile_args += ["-O3", "-fno-trapping-math", "-fno-math-errno"]
            if unix and ext.name.startswith("pythia._quant"):
                ext.extra_compile_args += ["-ffp-contract=off"]  # float32 steps as the reference rounds them
            if ext.name.endswith("_avx2"):
                ext.extra_compile_args += SIMD_FLAGS
            if ext.name.endswith("_vnni"):
                ext.extra_compile_args += VNNI_FLAGS
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
    import numpy
    from Cython.Build import cythonize
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    inc = [numpy.get_include(), "kernels"]  # NumPy's C API (array pointers); kernels/_kernels.h
    exts = [Extension("pythia._kernels", ["kernels/_kernels.pyx"], define_macros=macros, include_dirs=inc),
            # the same source (it includes _kernels.pyx), built with SIMD_FLAGS by BuildExt
            Extension("pythia._kernels_avx2", ["kernels/_kernels_avx2.pyx"], define_macros=macros,
                      include_dirs=inc),
            # the Llama-family kernels (RMSNorm, rotary embedding, SwiGLU) and decoding's few-row
            # products; baseline flags only
            Extension("pythia._llama_kernels", ["kernels/_llama.pyx"], define_macros=macros, include_dirs=inc,
                      depends=["kernels/_pool.h"]),
            # Q8_0 int8 matrix products (pythia.quant), baseline, AVX2 and AVX-512 VNNI builds of one source
            Extension("pythia._quant", ["kernels/_quant.pyx"], define_macros=macros, include_dirs=inc,
                      depends=["kernels/_pool.h"]),
            Extension("pythia._quant_avx2", ["kernels/_quant_avx2.pyx"], define_macros=macros,
                      include_dirs=inc, depends=["kernels/_pool.h"]),
            Extension("pythia._quant_vnni", ["kernels/_quant_vnni.pyx"], define_macros=macros,
                      include_dirs=inc, depends=["kernels/_pool.h"]),
            # byte-level BPE (pre-tokenize, encode, train); C++ for its hash maps and heap
            Extension("pythia._bpe", ["kernels/_bpe.pyx"], define_macros=macros, include_dirs=inc,
                      language="c++"),
            # the tokenizer.json BPE merge step (pythia.text.hf_bpe_fast); baseline flags, C++ as _bpe
            Extension("pythia._hf_bpe", ["kernels/_hf_bpe.pyx"], language="c++")]
    return cythonize(exts, compiler_directives={"language_level": 3})


setup(
    packages=["pythia", "pythia.commands", "pythia.models", "pythia.kernels", "pythia.corpora", "pythia.formats", "pythia.inspection",
              "pythia.quant", "pythia.serve", "pythia.system", "pythia.text", "pythia.training"],
    package_data={"pythia.serve": ["static/*.html"]},   # the web chat page, served as a file
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
