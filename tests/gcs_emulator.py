"""A local Cloud Storage server for the tests: gcp-storage-emulator, in memory, with one bucket.

  python tests/gcs_emulator.py PORT BUCKET

Real Cloud Storage sends an object's generation in the `x-goog-generation` header of a download,
and tensorstore (Orbax's array storage) reads it there to update OCDBT manifests; the emulator
puts it in the object's JSON only, so it is added to the download responses here.
"""

import sys

from gcp_storage_emulator.handlers import objects


def _with_generation(handler):
  def wrapped(request, response, storage, *args, **kwargs):
    handler(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001  (not found: the handler said so)
      return
    response["x-goog-generation"] = str(obj.get("generation", "1"))
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
  return wrapped


objects.download = _with_generation(objects.download)
objects.get = _with_generation(objects.get)

from gcp_storage_emulator.server import create_server  # noqa: E402  (routes bind the handlers)

if __name__ == "__main__":
  port, bucket = int(sys.argv[1]), sys.argv[2]
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.run()
