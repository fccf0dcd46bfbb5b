# syntax=docker/dockerfile:1
# Node 22, chosen by measurement between the two supported LTS lines (`npm run bench`,
# which runs the proxy on each, fetched from the npm registry; README, "Benchmark"),
# two runs on 2026-12-07, Node 22.23.5 against 24.22.3:
#   peak RSS after 256 MiB down and up   147-150 MiB   against 193 MiB
#   idle RSS settled (its own memory)     85 MiB (33)   against 85 MiB (37)
#   peak RSS under the bench's load       147-150 MiB   against 145-164 MiB
#   spawn to /-/ready                     396-548 ms    against 494-592 ms
# CPU per request against the bare stack on the same Node was within run-to-run noise.
# Node 22 is supported until 2027-04-30: measure again and move to 24 before then.
# Build: type-check, and bundle src/ and its dependencies into dist/cli.js (scripts/bundle.mjs).
FROM node:22-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
COPY scripts ./scripts
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

# Run: production dependencies and dist/ only, as a non-root user.
FROM node:22-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY config ./config
RUN ln -s /app/dist/cli.js /usr/local/bin/bearer-proxy
# The image's `node` user by its numeric id: Kubernetes' runAsNonRoot admits only a numeric USER.
USER 1000:1000
# In a container the proxy must listen on all interfaces: that is only allowed with
# BEARER_PROXY_INBOUND_KEY set (or, knowingly, BEARER_PROXY_ALLOW_ANONYMOUS=true).
ENV BEARER_PROXY_HOST=0.0.0.0 BEARER_PROXY_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s CMD ["bearer-proxy", "health"]
ENTRYPOINT ["bearer-proxy"]
CMD ["serve"]
