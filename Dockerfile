# mcudpt in a container: the standalone binary (bun build --compile) on a distroless base with glibc,
# running as the image's non-root user. Build and run (see docs/operations.md):
#   docker build -t mcudpt .
#   docker run --rm -p 1937:1937/udp -p 1937:1937 -p 127.0.0.1:9537:9537 -e MCUDPT_SECRET=… mcudpt
#   docker run --rm -e MCUDPT_SECRET=… mcudpt sender --udp dns.internal:53 --tcp tunnel.example:1937

# Build stage: the same commands as on a developer machine.
FROM oven/bun:1.4.5 AS build
WORKDIR /src
COPY . .
RUN bun install --frozen-lockfile && bun run compile

# Run stage: glibc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/build/bin/mcudpt /usr/local/bin/mcudpt
# nonroot (65532:65532): nothing here needs root; ports below 1024 need --cap-add NET_BIND_SERVICE
# or a port mapping (-p 53:1937/udp).
USER 65532:65532
EXPOSE 1937/udp 1937/tcp 9537/tcp
ENTRYPOINT ["/usr/local/bin/mcudpt"]
# Metrics listen on all interfaces *inside* the container; publish the port on 127.0.0.1 only (above).
CMD ["receiver", "--udp", ":1937", "--tcp", ":1937", "--metrics", "0.0.0.0:9537", "--log-format", "json"]
