# One image for both services: `python -m token_api` or `python -m activator`.
FROM golang:1.23-bookworm AS probe
RUN go install github.com/grpc-ecosystem/grpc-health-probe@v0.4.37

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY --from=probe /go/bin/grpc-health-probe /usr/local/bin/grpc-health-probe
COPY pyproject.toml ./
COPY protos ./protos
COPY waiting_core ./waiting_core
COPY token_api ./token_api
COPY activator ./activator
RUN pip install --no-cache-dir grpcio-tools==1.85.1 \
    && mkdir -p gen \
    && python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen protos/waiting/v1/*.proto \
    && touch gen/waiting/__init__.py gen/waiting/v1/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall -y grpcio-tools \
    && useradd --system --uid 10001 waiting
USER waiting
EXPOSE 50051 50052
CMD ["python", "-m", "token_api"]
