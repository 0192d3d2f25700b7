# mediamesh: the four services and meshctl in one image (k8s/ runs each binary by name).
#   docker build -t registry.example.com/mediamesh:0.1.0 .

FROM rust:1.95-bookworm AS build
# cmake and nasm build libjpeg-turbo (turbojpeg) from source
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake nasm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
      --bin mediamesh-ingest --bin mediamesh-scheduler --bin mediamesh-media \
      --bin mediamesh-inference --bin mediamesh-console --bin meshctl \
 && mkdir -p /out \
 && cp target/release/mediamesh-ingest target/release/mediamesh-scheduler \
       target/release/mediamesh-media target/release/mediamesh-inference \
       target/release/mediamesh-console target/release/meshctl /out/

FROM debian:bookworm-slim AS runtime
# ffmpeg/ffprobe run the audio and video jobs; ca-certificates for S3 and AI providers over TLS
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 mediamesh \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin mediamesh
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENV MM_LOG_FORMAT=json \
    MM_TMP_DIR=/tmp
EXPOSE 50051 50052 50053 50054 8080 9101 9102 9103 9104
# No default service: run mediamesh-ingest, -scheduler, -media, -inference, -console or meshctl.
CMD ["meshctl", "--help"]
