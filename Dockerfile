# One image for the API, the UI and one-off indexing runs.
FROM python:3.11-slim
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libjpeg62-turbo && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY indexer indexer
COPY search_api search_api
COPY ui ui
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 && pip install --no-cache-dir '.[faiss]'
ENV CLIPSEARCH_HOME=/data
EXPOSE 8000 8501
CMD ["clipsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
