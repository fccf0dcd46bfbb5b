# syntax=docker/dockerfile:1
# Build: type-check, and bundle src/ and its dependencies into dist/cli.js (scripts/bundle.mjs).
FROM node:24-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
COPY scripts ./scripts
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

# Run: production dependencies and dist/ only, as a non-root user.
FROM node:24-slim
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
