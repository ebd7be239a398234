FROM python:3.11-slim

# no .pyc clutter, logs straight to the container's output
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . && useradd --system --uid 10001 --no-create-home gateway

# ops mount their own config and tables over these: -v $PWD/routes:/etc/gateway/routes:ro
COPY routes /etc/gateway/routes
VOLUME ["/etc/gateway/routes"]

USER gateway
# 8080: the proxy; 9901: the admin listener (/healthz, /readyz, /metrics, grants), when the
# mounted gateway.yaml sets admin.listen: 0.0.0.0:9901 (or 127.0.0.1:9901 to keep it inside)
EXPOSE 8080 9901
# /healthz on the admin.listen address of the mounted config (unhealthy, saying why, without one)
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["gateway", "health", "--config", "/etc/gateway/gateway.yaml"]
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml", "--host", "0.0.0.0", "--port", "8080"]
