# Dockerfile - gemmad on the CPU backend (for CUDA see Dockerfile.cuda).
#   docker build -t gemmad:cpu .
#   docker run --rm -p 5555:5555 -v /path/to/models:/models gemmad:cpu --model /models/gemma-2b
# Stage 1 builds and installs into /opt/gemmad; stage 2 holds only the programs and their runtime
# libraries and runs as an unprivileged user.
FROM debian:bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/deps.sh scripts/deps.sh
RUN scripts/deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DGM_CUDA=OFF \
 && cmake --build /build -j"$(nproc)" \
 && cmake --install /build --prefix /opt/gemmad

FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      libzmq5 libprotobuf-c1 libsentencepiece0 libconfig9 libcjson1 libmicrohttpd12 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/gemmad --create-home gemmad
COPY --from=build /opt/gemmad /opt/gemmad
ENV PATH=/opt/gemmad/bin:$PATH
USER gemmad
WORKDIR /var/lib/gemmad
EXPOSE 5555 8000
ENTRYPOINT ["gemmad", "--backend", "cpu", "--listen", "tcp://0.0.0.0:5555"]
CMD ["--help"]
