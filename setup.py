"""Packaging: one distribution with the pipeline, encoder and serving packages.

Runtime pins live in requirements.txt (installed by `make`); install_requires names what a
Dataflow worker needs when it installs this package with --setup_file.
"""

from setuptools import find_packages, setup

setup(
    name="imgsearch",
    version="0.1.0",
    description="Semantic image search: Beam indexing pipeline, ScaNN index, serving",
    python_requires=">=3.11,<3.12",
    packages=find_packages(
        include=[
            "imgsearch*",
            "evaluation*",
            "serving*",
            "training*",
            "pipelines*",
            "models*",
            "index*",
            "ranking*",
            "encoders*",
            "storage*",
            "runtime*",
        ]
    ),
    install_requires=[
        "apache-beam[gcp]==2.77.0",
        "tensorflow==2.20.*",
        "ai-edge-litert==2.3.0",
        "scann==1.4.2",
        "pillow",
        "pyarrow",
        "requests",
        "gcsfs",
        "fastapi",
        "fastapi-offline",
        "uvicorn",
        "httptools",
        "jinja2",
        "python-multipart",
        "prometheus-client",
        "tqdm",
    ],
    # The search page's Jinja2 templates ship inside the serving package.
    package_data={"serving": ["templates/*.html"]},
    entry_points={"console_scripts": ["imgsearch=imgsearch.cli:entry"]},
)
