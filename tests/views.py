import itertools

from asgiref.sync import sync_to_async
from django.contrib.auth import authenticate, get_user, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.cache import cache_page
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from tenancy import current_tenant
from tenancy.middleware import non_atomic_tenant_request
from tests.tenantapp.models import Note


def notes(request):
    return JsonResponse({"notes": list(Note.objects.values_list("text", flat=True))})


async def async_notes(request):
    texts = [note.text async for note in Note.objects.all()]
    return JsonResponse({"notes": texts})


def notes_page(request):
    """An HTML page with a query on the main database and one on the tenant's (and a
    write on the tenant's with ``?write=TEXT``)."""
    if "write" in request.GET:
        Note.objects.create(text=request.GET["write"])
    users = User.objects.count()
    texts = ", ".join(Note.objects.values_list("text", flat=True))
    return HttpResponse(f"<html><body><p>{users} users; notes: {texts}</p></body></html>")


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


@login_required
def private_notes(request):
    """A view of a user's project that only asks for a signed-in user."""
    return JsonResponse(
        {"user": request.user.username, "notes": list(Note.objects.values_list("text", flat=True))}
    )


def me(request):
    """The user as request.user and as code that calls auth.get_user() itself sees it."""
    return JsonResponse(
        {"user": request.user.username or None, "get_user": get_user(request).username or None}
    )


async def async_me(request):
    user = await request.auser()
    return JsonResponse({"user": user.username or None})


def sign_in(request):
    """A sign-in form's work: the credentials of the POST, then login()."""
    user = authenticate(
        request, username=request.POST["username"], password=request.POST["password"]
    )
    if user is None:
        return HttpResponse("wrong credentials", status=403)
    login(request, user)
    return HttpResponse("signed in")


PAGE_RENDERS = itertools.count()


def tenant_page(request):
    """A page that says whose it is and when it was made, to tell a cached copy apart."""
    tenant = current_tenant()
    return HttpResponse(f"{tenant.slug if tenant else 'main'} {next(PAGE_RENDERS)}")


cached_tenant_page = cache_page(600)(tenant_page)


class OnePerMinute(AnonRateThrottle):
    rate = "1/min"


class NotesAPI(APIView):
    """A DRF view of the tenant's notes, throttled to one request a minute per client."""

    throttle_classes = [OnePerMinute]

    def get(self, request):
        return Response({"notes": list(Note.objects.values_list("text", flat=True))})

    def post(self, request):
        note = Note.objects.create(text=request.data["text"])
        return Response({"id": note.pk, "user": request.user.username}, status=201)


def explode(request):
    raise RuntimeError(f"failed for {request.tenant.slug}")
