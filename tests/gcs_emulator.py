"""A local Cloud Storage server for the tests: gcp-storage-emulator, in memory, with one bucket.

  python tests/gcs_emulator.py PORT BUCKET

Real Cloud Storage sends an object's generation in the `x-goog-generation` header of a download,
and tensorstore (Orbax's array storage) reads it there to update OCDBT manifests; the emulator
puts it in the object's JSON only, so it is added to the download responses here.

The emulator ignores `ifGenerationMatch` (its insert and delete handlers never read it), which
the workdir lease (albert_jax/lease.py) relies on: here uploads and deletes are refused with
412 Precondition Failed, as Cloud Storage refuses them, when the object's generation is not the
one asked for (0: the object must not exist).
"""

import sys
from http import HTTPStatus

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


def _if_generation_match(handler, name_of):
  def wrapped(request, response, storage, *args, **kwargs):
    wanted = request.query.get("ifGenerationMatch")
    if wanted:
      try:
        current = str(storage.get_file_obj(request.params["bucket_name"], name_of(request))
                      .get("generation", "1"))
      except Exception:  # noqa: BLE001  (no such object)
        current = "0"
      if current != wanted[0]:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "Precondition Failed",
                                 "errors": [{"reason": "conditionNotMet"}]}})
        return
    handler(request, response, storage, *args, **kwargs)
  return wrapped


def _upload_name(request):
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data if isinstance(request.data, dict) else {}
  return data.get("name") or data.get("meta", {}).get("name")  # resumable, multipart


objects.insert = _if_generation_match(objects.insert, _upload_name)
objects.delete = _if_generation_match(objects.delete, lambda r: r.params["object_id"])

from gcp_storage_emulator.server import create_server  # noqa: E402  (routes bind the handlers)

if __name__ == "__main__":
  port, bucket = int(sys.argv[1]), sys.argv[2]
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.run()
