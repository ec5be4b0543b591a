"""The admin for tenants: provisioning from the add form, and actions that never leave a
tenant half-done.

``tenancy.Tenant`` is registered here; a project with its own tenant model
(``TENANCY_TENANT_MODEL``) registers it with ``TenantAdmin`` (or a subclass)::

    admin.site.register(Organisation, TenantAdmin)

Every change that touches a tenant's database (provisioning, migrating, deleting) needs the
``provision_tenant`` permission besides Django's add/change/delete permission.
"""

from __future__ import annotations

from functools import update_wrapper
from typing import TYPE_CHECKING, Any, cast

import django
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import get_content_type_for_model
from django.contrib.admin.utils import unquote
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from tenancy import ledger
from tenancy.admin_log import log_transaction, record_tenant, tenant_log_entries
from tenancy.conf import (
    DEFAULT_TENANT_MODEL,
    TENANT_MODEL_SETTING,
    is_schema_server,
    tenancy_settings,
)
from tenancy.connections import unregister
from tenancy.exceptions import TenancyError
from tenancy.migration import MIGRATED, migrate_tenant
from tenancy.models import (
    MIGRATED_STATUSES,
    AbstractTenant,
    Domain,
    Membership,
    TenantMigrations,
    TenantStatus,
    get_tenant_model,
)
from tenancy.moving import move_tenant
from tenancy.provisioning import deprovision_tenant, provision_tenant
from tenancy.retention import archive_tenant, format_when, reactivate_tenant

if TYPE_CHECKING:
    from django.contrib.admin.models import LogEntry

PROVISION_PERMISSION = "provision_tenant"

STATUS_COLOURS = {
    TenantStatus.ACTIVE: "#2e7d32",
    TenantStatus.PROVISIONING: "#1565c0",
    TenantStatus.SUSPENDED: "#8d6e00",
    TenantStatus.FAILED: "#c62828",
    TenantStatus.DELETING: "#6a1b9a",
    TenantStatus.MOVING: "#1565c0",
    TenantStatus.RESTORING: "#1565c0",
    TenantStatus.ARCHIVED: "#616161",
}


class DomainInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Domain
    extra = 1


class MembershipInline(admin.TabularInline):  # type: ignore[type-arg]
    """The tenant's first members can be added with the tenant itself."""

    model = Membership
    extra = 1
    raw_id_fields = ["user"]


class TenantAdminForm(forms.ModelForm):  # type: ignore[type-arg]
    server = forms.ChoiceField(choices=())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "server" not in self.fields:
            return  # read-only for an existing tenant: its database stays where it is
        server = cast(forms.ChoiceField, self.fields["server"])
        server.choices = [(name, name) for name in tenancy_settings.SERVERS]
        server.initial = tenancy_settings.DEFAULT_SERVER


class TenantAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = TenantAdminForm
    inlines = [DomainInline, MembershipInline]
    list_display = [
        "slug",
        "name",
        "coloured_status",
        "server",
        "placement",
        "database_name",
        "primary_domain",
        "migrations",
        "created_at",
    ]
    list_filter = ["status", "server"]
    search_fields = ["slug", "name", "database_name", "domains__domain"]
    list_per_page = 50
    change_list_template = "admin/tenancy/tenant_change_list.html"

    def get_inlines(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        if tenancy_settings.users_per_tenant:
            return [DomainInline]  # no main-database users to make members
        return list(self.inlines)

    actions = [
        "migrate_selected",
        "verify_migrations",
        "suspend_selected",
        "activate_selected",
        "retry_provisioning",
        "reactivate_selected",
        "move_selected_tenants",
        "delete_selected_tenants",
    ]

    # -- the list ---------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # The ledger's entry in the same query: the list reads no tenant database.
        entry = TenantMigrations.objects.filter(tenant=OuterRef("pk"))
        queryset: QuerySet[Any] = super().get_queryset(request)
        annotated: QuerySet[Any] = queryset.prefetch_related("domains").annotate(
            ledger_applied=Subquery(entry.values("applied_id")[:1]),
            ledger_error=Subquery(entry.values("error")[:1]),
            ledger_recorded_at=Subquery(entry.values("recorded_at")[:1]),
        )
        return annotated

    @admin.display(description=_("status"), ordering="status")
    def coloured_status(self, tenant: AbstractTenant) -> str:
        """The status in its colour, the detail on hover; an archived tenant's with the
        date its data is kept until."""
        colour = STATUS_COLOURS.get(TenantStatus(tenant.status), "inherit")
        status = format_html(
            '<strong style="color: {}" title="{}">{}</strong>',
            colour,
            tenant.status_detail,
            tenant.get_status_display(),
        )
        if tenant.status == TenantStatus.ARCHIVED and tenant.retained_until is not None:
            until = date_format(timezone.localtime(tenant.retained_until), "DATE_FORMAT")
            return format_html("{} {}", status, _("until %(date)s") % {"date": until})
        return status

    @admin.display(description=_("placement"))
    def placement(self, tenant: AbstractTenant) -> str:
        """Where the tenant's tables are: a database of its own, or a schema of its
        server's shared database (named)."""
        try:
            template = tenancy_settings.server(tenant.server)
        except KeyError:
            return "-"  # the server left the settings; the server column shows which
        if is_schema_server(template):
            return str(_("schema in %(database)s") % {"database": template["DATABASE"]})
        return str(_("database"))

    @admin.display(description=_("primary domain"))
    def primary_domain(self, tenant: AbstractTenant) -> str:
        domains = list(tenant.domains.all())  # type: ignore[attr-defined]
        primary = next((d for d in domains if d.is_primary), domains[0] if domains else None)
        return primary.domain if primary is not None else "-"

    @admin.display(description=_("migrations"))
    def migrations(self, tenant: AbstractTenant) -> str:
        """From the migration ledger (``tenancy.ledger``), read with the page's tenants;
        "Verify migrations" reads the databases again."""
        if tenant.status not in MIGRATED_STATUSES:
            return "-"
        entry = ledger.state_for(
            getattr(tenant, "ledger_applied", None), getattr(tenant, "ledger_error", None)
        )
        recorded = getattr(tenant, "ledger_recorded_at", None)
        when = (
            _("as of %(time)s") % {"time": date_format(recorded, "DATETIME_FORMAT")}
            if recorded
            else ""
        )
        if entry.status == ledger.UNKNOWN:
            return str(_("not read yet"))
        if entry.status == ledger.FAILED:
            failed = str(_("failed") if entry.pending is not None else _("unreachable"))
            return format_html('<span title="{}">{}</span>', entry.error, failed)
        text = (
            str(_("%(count)d pending") % {"count": len(entry.pending)})
            if entry.pending
            else str(_("up to date"))
        )
        return format_html('<span title="{}">{}</span>', when, text)

    # -- permissions -------------------------------------------------------------------

    def _may_provision(self, request: HttpRequest) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{PROVISION_PERMISSION}")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and self._may_provision(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._may_provision(request)

    def has_provision_permission(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request) and self._may_provision(request)

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        if action_location is None:  # Django < 6.1
            actions = super().get_actions(request)
        else:
            actions = super().get_actions(request, action_location=action_location)  # type: ignore[call-arg]
        # Django's bulk delete would delete rows and leave their databases behind.
        actions.pop("delete_selected", None)
        return actions

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["status", "status_detail", "retained_until", "retained_backup"]
        # Retention is changed by its commands: a backup's path is deleted by a purge.
        return [
            "slug",
            "server",
            "database_name",
            "status",
            "status_detail",
            "retained_until",
            "retained_backup",
        ]

    # -- adding provisions -------------------------------------------------------------

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if not change:
            self._provision(request, form.instance)

    def _provision(self, request: HttpRequest, tenant: AbstractTenant) -> bool:
        try:
            provision_tenant(tenant)
        except TenancyError as exc:
            messages.error(request, str(exc))
            request._tenancy_not_provisioned = True  # type: ignore[attr-defined]
            return False
        messages.success(request, _("Tenant %(slug)s is active.") % {"slug": tenant.slug})
        return True

    def message_user(
        self,
        request: HttpRequest,
        message: Any,
        level: int | str = messages.INFO,
        extra_tags: str = "",
        fail_silently: bool = False,
    ) -> None:
        # Not "added successfully" for a tenant whose provisioning failed.
        if level == messages.SUCCESS and getattr(request, "_tenancy_not_provisioned", False):
            return
        super().message_user(request, message, level, extra_tags, fail_silently)

    # -- actions -----------------------------------------------------------------------

    @admin.action(description=_("Migrate selected tenants"), permissions=["provision"])
    def migrate_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for tenant in queryset.order_by("slug"):
            if tenant.status not in MIGRATED_STATUSES:
                messages.warning(request, f"Tenant {tenant.slug}: skipped, it is {tenant.status}.")
                continue
            result = migrate_tenant(tenant)
            if result.failed:
                messages.error(request, f"Tenant {tenant.slug}: failed: {result.error}")
            elif result.status == MIGRATED:
                messages.success(
                    request, f"Tenant {tenant.slug}: {result.applied} migration(s) applied."
                )
            else:
                messages.info(request, f"Tenant {tenant.slug}: {result.status}.")

    @admin.action(description=_("Verify migrations of selected tenants"), permissions=["change"])
    def verify_migrations(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Read each selected tenant's migrations from its database into the ledger."""
        counts: dict[str, int] = {}
        for tenant in queryset.filter(status__in=MIGRATED_STATUSES).order_by("slug"):
            result = migrate_tenant(tenant, check_only=True)
            unregister(tenant)
            counts[result.status] = counts.get(result.status, 0) + 1
            if result.failed:
                messages.error(request, f"Tenant {tenant.slug}: {result.error}")
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        messages.info(request, f"Read from the databases: {summary or 'no active tenant'}.")

    @admin.action(description=_("Suspend selected tenants"), permissions=["change"])
    def suspend_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._move(request, queryset, TenantStatus.ACTIVE, TenantStatus.SUSPENDED)

    @admin.action(description=_("Activate selected tenants"), permissions=["change"])
    def activate_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._move(request, queryset, TenantStatus.SUSPENDED, TenantStatus.ACTIVE)

    def _move(
        self, request: HttpRequest, queryset: QuerySet[Any], source: str, target: str
    ) -> None:
        for tenant in queryset.order_by("slug"):
            # Only from the expected state, in one statement: a tenant being provisioned
            # or deleted meanwhile is left alone.
            moved = (
                type(tenant)
                ._default_manager.filter(pk=tenant.pk, status=source)
                .update(status=target, status_detail="")
            )
            if moved:
                messages.success(request, f"Tenant {tenant.slug}: {target}.")
            else:
                messages.warning(
                    request,
                    f"Tenant {tenant.slug}: left {tenant.status}; only {source} tenants move.",
                )

    @admin.action(description=_("Retry provisioning"), permissions=["provision"])
    def retry_provisioning(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for tenant in queryset.order_by("slug"):
            if tenant.status != TenantStatus.FAILED:
                messages.warning(request, f"Tenant {tenant.slug}: skipped, it is {tenant.status}.")
                continue
            self._provision(request, tenant)

    @admin.action(description=_("Reactivate selected archived tenants"), permissions=["provision"])
    def reactivate_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for tenant in queryset.order_by("slug"):
            try:
                reactivate_tenant(tenant)
            except TenancyError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, f"Tenant {tenant.slug}: active again.")

    @admin.action(
        description=_("Delete selected tenants and their databases"), permissions=["delete"]
    )
    def delete_selected_tenants(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> HttpResponse | None:
        return self._delete_confirmation(request, list(queryset.order_by("slug")))

    @admin.action(
        description=_("Move selected tenants to another server"), permissions=["provision"]
    )
    def move_selected_tenants(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> HttpResponse | None:
        """A page to choose the server; moves the tenants on a confirming POST."""
        tenants = list(queryset.order_by("slug"))
        form = MoveTenantsForm(request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            server, keep = form.cleaned_data["server"], form.cleaned_data["keep_source"]
            for tenant in tenants:
                try:
                    report = move_tenant(tenant, server, keep_source=keep)
                except TenancyError as exc:
                    messages.error(request, str(exc))
                else:
                    seconds = sum(report.steps.values())
                    messages.success(
                        request,
                        f"Tenant {tenant.slug}: moved to server {server} in {seconds:.1f}s.",
                    )
            return None
        return self._confirmation_page(
            request, tenants, form, _("Move tenants"), "admin/tenancy/move_tenants.html"
        )

    # Deleting or moving a tenant must not run inside ATOMIC_REQUESTS' transaction on the
    # main database (deprovision_tenant and move_tenant refuse): other processes must see
    # it marked deleting (moving) first. Both actions run from the changelist.
    @method_decorator(transaction.non_atomic_requests)
    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The fleet's migration state in one line, from the ledger (two queries).
        summary = ledger.summary_line(ledger.fleet_summary())
        return super().changelist_view(request, {"subtitle": summary, **(extra_context or {})})

    def get_urls(self) -> list[Any]:
        from django.urls import path

        name = f"{self.opts.app_label}_{self.opts.model_name}_connections"
        view = self.admin_site.admin_view(self.connections_view)
        return [path("connections/", view, name=name), *super().get_urls()]

    def connections_view(self, request: HttpRequest) -> HttpResponse:
        """The tenant connections of the process that serves the page, per server, and
        the state of each read replica (``tenancy.connections.snapshot()``)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        from tenancy.connections import snapshot

        state = snapshot()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Tenant connections of this process"),
            "snapshot": state,
            "servers": sorted(state.servers.items()),
            "replicas": sorted(state.replicas.items()),
        }
        return TemplateResponse(request, "admin/tenancy/connections.html", context)

    @method_decorator(transaction.non_atomic_requests)
    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        changelist = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
        tenant = self.get_object(request, object_id)
        if tenant is None:
            messages.warning(request, _("That tenant does not exist (any more)."))
            return HttpResponseRedirect(changelist)
        if not self.has_delete_permission(request, tenant):
            raise PermissionDenied
        return self._delete_confirmation(request, [tenant]) or HttpResponseRedirect(changelist)

    def _delete_confirmation(
        self, request: HttpRequest, tenants: list[AbstractTenant]
    ) -> HttpResponse | None:
        """A page where the user types each tenant's slug; on a matching POST, archives the
        tenants for the days asked (``tenancy.retention``) or deletes them."""
        form = DeleteTenantsForm(tenants, request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            keep, days = form.cleaned_data["keep_database"], form.cleaned_data["retain_days"]
            for tenant in tenants:
                try:
                    done = self._archive(tenant, days) if days else self._delete(tenant, keep)
                except TenancyError as exc:
                    messages.error(request, str(exc))
                else:
                    messages.success(request, f"Tenant {tenant.slug}: {done}.")
            return None
        return self._confirmation_page(
            request, tenants, form, _("Delete tenants"), "admin/tenancy/delete_tenants.html"
        )

    @staticmethod
    def _archive(tenant: AbstractTenant, days: int) -> str:
        until = archive_tenant(tenant, days).retained_until
        return f"archived, its data kept until {format_when(until)}" if until else "archived"

    @staticmethod
    def _delete(tenant: AbstractTenant, keep_database: bool) -> str:
        deprovision_tenant(tenant, keep_database=keep_database)
        return "deleted (database kept)" if keep_database else "deleted"

    def _confirmation_page(
        self,
        request: HttpRequest,
        tenants: list[AbstractTenant],
        form: forms.Form,
        title: Any,
        template: str,
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "tenants": tenants,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "action": request.POST.get("action", ""),
            # Django 6 marks breadcrumbs up as a list, and styles only that.
            "breadcrumbs_as_list": django.VERSION >= (6,),
        }
        return TemplateResponse(request, template, context)


class MoveTenantsForm(forms.Form):
    server = forms.ChoiceField(
        label=_("Server"),
        help_text=_("Where the tenants' databases go (a server of TENANCY['SERVERS'])."),
    )
    keep_source = forms.BooleanField(
        required=False,
        label=_("Keep the source databases"),
        help_text=_("Keep each old database, read-only, instead of dropping it."),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["server"].choices = [(name, name) for name in sorted(tenancy_settings.SERVERS)]  # type: ignore[attr-defined]


class DeleteTenantsForm(forms.Form):
    retain_days = forms.IntegerField(
        required=False,  # left out: TENANCY["RETENTION_DAYS"], as for delete_tenant
        min_value=0,
        max_value=36500,
        label=_("Keep the data for (days)"),
        help_text=_(
            "The tenants are archived: not served, their data kept read-only for this many "
            "days (they can be reactivated meanwhile), then dropped by purge_tenants. 0: "
            "drop the databases now."
        ),
    )
    keep_database = forms.BooleanField(
        required=False,
        label=_("Keep the databases"),
        help_text=_(
            "With 0 days: only remove the tenants from the registry; their data stays on "
            "the server."
        ),
    )

    def __init__(self, tenants: list[AbstractTenant], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["retain_days"].initial = tenancy_settings.RETENTION_DAYS
        self.tenants = tenants
        for tenant in tenants:
            self.fields[f"slug_{tenant.pk}"] = forms.CharField(
                label=_("Type %(slug)s to confirm") % {"slug": tenant.slug}
            )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("retain_days") is None and "retain_days" not in self.errors:
            keep = cleaned.get("keep_database")
            cleaned["retain_days"] = 0 if keep else tenancy_settings.RETENTION_DAYS
        if cleaned.get("keep_database") and cleaned.get("retain_days"):
            self.add_error(
                "keep_database",
                _("Archiving keeps the data already; keep the databases only with 0 days."),
            )
        for tenant in self.tenants:
            if cleaned.get(f"slug_{tenant.pk}") != tenant.slug:
                self.add_error(f"slug_{tenant.pk}", _("This is not the tenant's slug."))
        return cleaned


class TenantAdminSite(admin.AdminSite):
    """An admin site for tenant data, reached on a tenant's own domain and only by its
    admins (``Membership.is_admin``); on the main site it does not exist (404)::

        tenant_admin = TenantAdminSite(name="tenant_admin")
        tenant_admin.register(Project, TenantModelAdmin)
        urlpatterns = [path("manage/", tenant_admin.urls), ...]

    Models of tenant apps belong only on such a site, and only they: ``manage.py check``
    reports one registered on another admin site (``tenancy.E007``) and a shared model
    registered here (``tenancy.E008``).

    Django's admin log is shared by all tenants; every ``ModelAdmin`` registered here
    records the tenant of the entries it writes (``TenantLogMixin``), and the history
    pages and "Recent actions" show only the current tenant's entries.
    """

    site_header = _("Tenant administration")

    def register(self, model_or_iterable: Any, admin_class: Any = None, **options: Any) -> None:
        admin_class = admin_class or admin.ModelAdmin
        if not issubclass(admin_class, TenantLogMixin):
            # As Django itself does with ``options``: a subclass, here one that records
            # the tenant of its log entries.
            admin_class = type(
                admin_class.__name__,
                (TenantLogMixin, admin_class),
                {"__module__": admin_class.__module__},
            )
        super().register(model_or_iterable, admin_class, **options)

    def adopt_registrations(self, *app_labels: str, from_site: admin.AdminSite) -> None:
        """Move the models of ``app_labels`` registered on ``from_site`` to this site,
        with the same ModelAdmin classes, for apps that register themselves::

            tenant_admin.adopt_registrations("flatpages", "redirects", from_site=admin.site)

        The tenant's admins get the permissions of a ``TenantModelAdmin`` on them.
        """
        for model, model_admin in list(from_site._registry.items()):
            if model._meta.app_label in app_labels:
                from_site.unregister(model)
                admin_class = type(model_admin)
                if not issubclass(admin_class, TenantAdminPermissions):
                    admin_class = type(
                        admin_class.__name__,
                        (TenantAdminPermissions, admin_class),
                        {"__module__": admin_class.__module__},
                    )
                self.register(model, admin_class)

    def admin_view(self, view: Any, cacheable: bool = False) -> Any:
        checked = super().admin_view(view, cacheable)

        def tenant_only(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            _require_tenant(request)
            response: HttpResponse = checked(request, *args, **kwargs)
            return response

        return update_wrapper(tenant_only, checked)

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        _require_tenant(request)
        return super().login(request, extra_context)

    def has_permission(self, request: HttpRequest) -> bool:
        """An active user who is an admin member of the request's tenant; with users per
        tenant (the user model in ``TENANT_APPS``), an active staff user of the tenant."""
        tenant, user = getattr(request, "tenant", None), request.user
        if tenant is None or not user.is_active or not user.is_authenticated:
            return False
        if tenancy_settings.users_per_tenant:
            return bool(user.is_staff)
        cached = getattr(request, "_tenancy_tenant_admin", None)
        if cached is None or cached[0] != tenant.pk:
            allowed = Membership.objects.filter(
                user_id=user.pk, tenant_id=tenant.pk, is_admin=True
            ).exists()
            cached = request._tenancy_tenant_admin = (tenant.pk, allowed)  # type: ignore[attr-defined]
        return bool(cached[1])

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        tenant = getattr(request, "tenant", None)
        if tenant is not None:
            context["site_header"] = f"{self.site_header}: {tenant.name}"
        return context

    def get_log_entries(self, request: HttpRequest) -> QuerySet[LogEntry]:
        """The "Recent actions" of the index page: the current tenant's only."""
        entries = tenant_log_entries(_require_tenant(request))
        return entries.select_related("content_type", "user")


def _require_tenant(request: HttpRequest) -> AbstractTenant:
    tenant: AbstractTenant | None = getattr(request, "tenant", None)
    if tenant is None:
        raise Http404("The tenant admin is reached on a tenant's own domain.")
    return tenant


class TenantLogMixin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Writes the admin log entries of a ``TenantAdminSite`` with their tenant, and shows
    a history of the current tenant's entries only: objects of different tenants share
    primary keys, and Django's log, in the main database, tells them apart by nothing
    else. ``TenantAdminSite.register`` adds it to every ``ModelAdmin``."""

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> LogEntry:
        tenant = _require_tenant(request)
        with log_transaction():
            entry = super().log_addition(request, obj, message)
            record_tenant(tenant, [entry])
        return entry

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> LogEntry:
        tenant = _require_tenant(request)
        with log_transaction():
            entry = super().log_change(request, obj, message)
            record_tenant(tenant, [entry])
        return entry

    def log_deletions(self, request: HttpRequest, queryset: Any) -> list[LogEntry]:
        tenant = _require_tenant(request)
        with log_transaction():
            entries = super().log_deletions(request, queryset)
            record_tenant(tenant, entries)
        return entries

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Django's view, with the list it shows (and pages) replaced by the tenant's.
        from django.contrib.admin.views.main import PAGE_VAR

        entries = (
            tenant_log_entries(_require_tenant(request))
            .filter(
                object_id=unquote(object_id),
                content_type=get_content_type_for_model(self.model),
            )
            .select_related("user", "content_type")
            .order_by("action_time")
        )
        paginator = self.get_paginator(request, entries, 100)
        page = paginator.get_page(request.GET.get(PAGE_VAR, 1))
        tenant_history = {
            "action_list": page,
            "page_range": paginator.get_elided_page_range(page.number),
            "pagination_required": paginator.count > 100,
        }
        return super().history_view(
            request, object_id, {**tenant_history, **(extra_context or {})}
        )


class TenantAdminPermissions:
    """What a tenant's admins may do on a ``TenantAdminSite``: view, add, change and
    delete its rows, whatever their permissions on the main site."""

    admin_site: admin.AdminSite

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.admin_site.has_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.admin_site.has_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.admin_site.has_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.admin_site.has_permission(request)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.admin_site.has_permission(request)


class TenantModelAdmin(TenantAdminPermissions, TenantLogMixin):
    """A ``ModelAdmin`` for a tenant model on a ``TenantAdminSite``: the tenant's admins
    may view, add, change and delete its rows (and see its history, the tenant's only)."""


class MembershipAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["user", "tenant", "is_admin", "created_at"]
    list_filter = ["is_admin"]
    search_fields = ["user__username", "tenant__slug"]
    raw_id_fields = ["user", "tenant"]


def _users_per_tenant() -> bool:
    try:
        return tenancy_settings.users_per_tenant
    except ImproperlyConfigured:
        # Settings that cannot be read are reported by `manage.py check` (tenancy.E001),
        # in one line, instead of failing the admin's import with a traceback.
        return False


if not _users_per_tenant():
    admin.site.register(Membership, MembershipAdmin)


if getattr(settings, TENANT_MODEL_SETTING, DEFAULT_TENANT_MODEL) == DEFAULT_TENANT_MODEL:
    admin.site.register(get_tenant_model(), TenantAdmin)
