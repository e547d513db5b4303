# lightning_sep for GPU clusters: docker build -t lightning-sep . && docker run --gpus all -v $PWD/data:/data \
#   -v $PWD/runs:/runs lightning-sep fit experiments/supervised/demo_speech_noise.yaml data.root=/data/demo-speech-noise
# The same pinned packages as `make install` (setup.cfg + constraints.txt); torch===2.13.0 is the registry's CUDA build.
FROM python:3.11.7-slim-bookworm

# sound packages the demo recipes read; libsndfile comes inside the soundfile wheel
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      asterisk-core-sounds-en-wav openttd-opensfx simutrans-pak64 pocketsphinx-testdata espeak-ng \
      libfluidsynth3 timgm6mb-soundfont ffmpeg tuxpaint-stamps-default make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY setup.cfg pyproject.toml constraints.txt README.md ./
COPY lightning_sep ./lightning_sep
RUN pip install --no-cache-dir -c constraints.txt . \
 && python -c "import torch, torchaudio, torchvision, pytorch_lightning, lightning_sep"
COPY experiments ./experiments
COPY benchmarks ./benchmarks

# a non-root user; data and runs are volumes, linked where the configs' relative defaults (data/..., runs/) point
RUN useradd --create-home --uid 1000 sep && mkdir -p /data /runs && chown sep:sep /data /runs \
 && ln -s /data /app/data && ln -s /runs /app/runs
USER sep
ENV WANDB_MODE=offline
VOLUME ["/data", "/runs"]
ENTRYPOINT ["lightning-sep"]
CMD ["--help"]
