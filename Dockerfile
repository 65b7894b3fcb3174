FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY workers ./workers
RUN pip install --no-cache-dir . && useradd --create-home cicb
USER cicb
EXPOSE 8080 8081 5555
CMD ["cicb", "receiver"]
