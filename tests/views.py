from asgiref.sync import sync_to_async
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse

from tenancy import current_tenant
from tenancy.middleware import non_atomic_tenant_request
from tests.tenantapp.models import Note


def notes(request):
    return JsonResponse({"notes": list(Note.objects.values_list("text", flat=True))})


async def async_notes(request):
    texts = [note.text async for note in Note.objects.all()]
    return JsonResponse({"notes": texts})


def whoami(request):
    tenant = current_tenant()
    return JsonResponse(
        {
            "tenant": tenant.slug if tenant else None,
            "request_tenant": request.tenant.slug if request.tenant else None,
            "path_info": request.path_info,
        }
    )


def link(request):
    return HttpResponse(reverse(notes))


def stream_notes(request):
    def chunks():
        for note in Note.objects.all():
            yield f"{note.text}\n"
        yield f"tenant={current_tenant().slug}\n"

    return StreamingHttpResponse(chunks())


def async_stream_notes(request):
    async def chunks():
        async for note in Note.objects.all():
            yield f"{note.text}\n"
        tenant = await sync_to_async(current_tenant)()
        yield f"tenant={tenant.slug}\n"

    return StreamingHttpResponse(chunks())


def write_then_fail(request):
    Note.objects.create(text="half an order")
    raise RuntimeError("the second half failed")


def write_ok(request):
    Note.objects.create(text="whole order")
    return HttpResponse("ok")


@non_atomic_tenant_request
def write_then_fail_exempt(request):
    Note.objects.create(text="exempt")
    raise RuntimeError("failed")


async def async_write(request):
    await Note.objects.acreate(text="async")
    return HttpResponse("ok")


def fail_outside_the_database(request):
    """An OperationalError that no database connection raised."""
    from django.db import OperationalError

    raise OperationalError("not from a database")
