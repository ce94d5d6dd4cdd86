"""albert-jax: ALBERT pretraining, fine-tuning and Hugging Face interop in JAX/Flax."""

from setuptools import find_packages, setup

# Ranges are the releases this code was tested with, up to the next minor release (jax, flax and
# orbax change APIs between minors): the floor tier (Python 3.11, jax 0.10.2) and the newest
# (Python 3.12+, jax 0.12), each pinned by its file in constraints/.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.13",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8",
    # 0.2.3's generated proto code needs protobuf >= 7 at runtime; apache-beam ([prepare]) keeps
    # protobuf < 7, and transformers reads spiece.model through that code.
    "sentencepiece>=0.2.0,<0.2.3",
    "ml-collections>=1.1.0",
    "tensorflow-datasets>=4.9.10,<5",
    "safetensors>=0.6",
    "google-crc32c>=1.9,<2",  # TF1 checkpoints' checksums (tf1_checkpoint), in C
    "numpy>=2.0",
    "absl-py>=2.0",
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    # gs:// paths: etils.epath for files, through fsspec's gcsfs (Orbax's own tensorstore reads
    # and writes the checkpoint arrays). Calendar-versioned: tested with 2026.10.
    "etils[epath]>=1.15,<2",
    "gcsfs>=2026.9,<2027",
]

# Compile for NVIDIA GPUs on any host (`python -m albert_jax.aot --topology=h100-8`): jax's CUDA
# plugin at our jax version makes compile-only GPUs from a target description, ptxas and NVVM
# build the kernels, and jax's cuDNN attention reads cuDNN's version while tracing. No driver,
# no GPU. (~1.9 GB.) On such a host other commands need JAX_PLATFORMS=cpu, or jax reports the
# plugin's failed start before falling back to the CPU.
GPU_AOT = [
    "jax-cuda13-plugin>=0.10.2,<0.13",
    "jax-cuda13-pjrt>=0.10.2,<0.13",
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cudnn-cu13>=9.10,<10",
]

# Serving exports (`python -m albert_jax.export`, docs/serving.md): jax.export's serializer, the
# JAX-to-ONNX converter and onnxruntime. jax2onnx exactly 0.13.0: every later release pins
# orbax-checkpoint below the 0.12 our checkpoints need.
EXPORT = [
    "flatbuffers>=25.12",
    "jax2onnx==0.13.0",
    "onnx>=1.23.2,<1.24",
    "onnxruntime>=1.32,<1.33",
]

EXTRAS_REQUIRE = {
    # References the tests compare against. Never imported by the package.
    # torch is pinned to the CPU build these machines carry; a bare `torch`
    # would pull a multi-GB CUDA build.
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.6",  # make test runs on both cores
        # The CPU build on these machines' disk (Python 3.11); on 3.12+ the registry's build.
        "torch==2.13.0; python_version < '3.12'",
        "torch==2.14.1; python_version >= '3.12'",
        "transformers>=4.46,<5",
        "jax[tpu]>=0.10.2,<0.13",  # the tests compile real TPU programs (albert_jax.aot)
        *GPU_AOT,  # ... and GPU programs
        # A local Cloud Storage server: the gs:// tests run against it (tests/gcs_emulator.py).
        "gcp-storage-emulator>=2026.7,<2027",
        "apache-beam>=2.77,<2.78",  # the tests run `prepare` on the local runner
        *EXPORT,  # the tests serve the exports
    ],
    # `python -m albert_jax.data.prepare`: cut a corpus into pairs once, on Apache Beam (local
    # processes, or Dataflow and other runners for the full corpus). Training does not need it.
    "prepare": ["apache-beam>=2.77,<2.78"],
    # libtpu: compile for Cloud TPU slices on any host (`python -m albert_jax.aot`), and run on
    # a Cloud TPU VM.
    "tpu": ["jax[tpu]>=0.10.2,<0.13"],
    "gpu-aot": GPU_AOT,
    "export": EXPORT,
    # TFDS registers wikipedia/bookcorpus/glue only when TensorFlow is installed.
    "tf": ["tensorflow-cpu"],
}

setup(
    name="albert-jax",
    version="0.1.0",
    description="ALBERT (A Lite BERT) in JAX/Flax: pretraining, fine-tuning, HF conversion",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["albert_jax", "albert_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
