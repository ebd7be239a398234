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
EXPOSE 8080
# the listener accepting connections; the gateway itself has no unauthenticated path to probe
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 8080), timeout=2).close()"]
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml", "--host", "0.0.0.0", "--port", "8080"]
