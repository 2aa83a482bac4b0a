# Two images from one file:
#   serve  the API and the UI, without torch: queries run on the ONNX export of each collection's model
#   index  serve + torch and open_clip, for `clipsearch index`, `reembed` and `serve --watch`; it writes
#          the ONNX export into CLIPSEARCH_HOME (/data), where the serve image reads it
FROM python:3.11-slim AS serve
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libjpeg62-turbo && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY clipsearch clipsearch
COPY indexer indexer
COPY search_api search_api
COPY ui ui
RUN pip install --no-cache-dir '.'
ENV CLIPSEARCH_HOME=/data
EXPOSE 8000 8501
CMD ["clipsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM serve AS index
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 && pip install --no-cache-dir '.[index]'
