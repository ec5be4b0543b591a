"""The tenant registry in the main database: tenants and the hostnames that reach them.

Projects that need more fields on the tenant subclass ``AbstractTenant`` and point the
``TENANCY_TENANT_MODEL`` setting at their model, the way ``AUTH_USER_MODEL`` works.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import DEFAULT_DB_ALIAS, models, router
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from tenancy.conf import DEFAULT_TENANT_MODEL, TENANT_MODEL_SETTING, tenancy_settings
from tenancy.registry_cache import RegistryQuerySet
from tenancy.registry_stamp import STAMP_TABLE
from tenancy.reserved import check_database_name_available
from tenancy.validators import (
    DATABASE_NAME_MAX_LENGTH,
    HOSTNAME_MAX_LENGTH,
    SLUG_MAX_LENGTH,
    is_valid_hostname,
    validate_database_name,
    validate_hostname,
    validate_slug,
    validate_tenant_hostname,
)


class TenantStatus(models.TextChoices):
    PROVISIONING = "provisioning", _("provisioning")
    ACTIVE = "active", _("active")
    SUSPENDED = "suspended", _("suspended")
    FAILED = "failed", _("failed")
    DELETING = "deleting", _("deleting")
    MOVING = "moving", _("moving")
    # Being made from a backup (``restore_tenant``): its database is not complete yet.
    RESTORING = "restoring", _("restoring")
    # Deleted with retention: not served, its data kept until ``retained_until``
    # (``purge_tenants`` removes it then; ``reactivate_tenant`` brings it back before).
    ARCHIVED = "archived", _("archived")


# The tenants whose databases are in use and kept at the current schema (migrate_tenants
# without --tenant). Provisioning, failed and deleting tenants are left to create_tenant
# and delete_tenant, which migrate or remove them themselves.
MIGRATED_STATUSES = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED)


def default_server() -> str:
    return tenancy_settings.DEFAULT_SERVER


class AbstractTenant(models.Model):
    """A customer with a database of its own on one of the configured servers."""

    slug = models.CharField(
        _("slug"),
        max_length=SLUG_MAX_LENGTH,
        unique=True,
        validators=[validate_slug],
        help_text=_("Lowercase letters, digits and hyphens. Cannot be changed later."),
    )
    name = models.CharField(_("name"), max_length=200)
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=TenantStatus.choices,
        default=TenantStatus.PROVISIONING,
    )
    status_detail = models.TextField(
        _("status detail"),
        blank=True,
        help_text=_("Why provisioning or deletion failed, for the operator."),
    )
    server = models.CharField(
        _("server"),
        max_length=63,
        default=default_server,
        help_text=_("A key of TENANCY['SERVERS'] in the settings."),
    )
    database_name = models.CharField(
        _("database name"),
        max_length=DATABASE_NAME_MAX_LENGTH,
        blank=True,
        validators=[validate_database_name],
        help_text=_("Derived from the slug when left blank."),
    )
    retained_until = models.DateTimeField(
        _("retained until"),
        null=True,
        blank=True,
        help_text=_("An archived tenant's data is removed after this (purge_tenants)."),
    )
    retained_backup = models.CharField(
        _("retained backup"),
        max_length=1000,
        blank=True,
        help_text=_("The backup file an archived tenant's data is kept in, its database dropped."),
    )
    ready_lsn = models.CharField(
        _("replicas ready at"),
        max_length=200,
        blank=True,
        editable=False,
        help_text=_(
            "The primary's WAL position once the tenant's database was last made or "
            "migrated, with its server and database: a read replica serves the tenant once "
            "it has replayed past it (tenancy.replicas)."
        ),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    Status: ClassVar[type[TenantStatus]] = TenantStatus

    # Writes that send no signal (update(), bulk_create()) reach the resolution cache too.
    objects = models.Manager.from_queryset(RegistryQuerySet)()

    class Meta:
        abstract = True
        ordering = ["slug"]
        verbose_name = _("tenant")
        verbose_name_plural = _("tenants")
        permissions = [
            ("provision_tenant", _("Can create, migrate and remove tenant databases")),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["server", "database_name"],
                name="%(app_label)s_%(class)s_unique_database",
            )
        ]

    def __str__(self) -> str:
        return self.slug

    # (server, database name) that tenancy.provisioning has just found free for this new
    # tenant: its save() does not ask again (provisioning asks once more after it).
    _tenancy_checked_database: tuple[str, str]

    def save(self, *args: Any, **kwargs: Any) -> None:
        # save() validates too: slugs and database names end up in SQL identifiers,
        # file paths and connection aliases, and are never trusted to the caller.
        self._fill_database_name()
        errors = {}
        for field, validate in (
            ("slug", validate_slug),
            ("database_name", validate_database_name),
        ):
            try:
                validate(getattr(self, field))
            except ValidationError as exc:
                errors[field] = exc.messages
        if errors:
            raise ValidationError(errors)
        stored = self._stored()
        self._check_identity(stored)
        self._check_database(stored)
        super().save(*args, **kwargs)

    def _do_update(self, base_qs: Any, using: Any, pk_val: Any, values: Any, *args: Any) -> Any:
        # ready_lsn is written where tenancy records it (tenancy.replicas, with update()):
        # an instance read before then would put an older position back.
        values = [value for value in values if value[0].name != "ready_lsn"]
        return super()._do_update(base_qs, using, pk_val, values, *args)

    def clean(self) -> None:
        super().clean()
        self._fill_database_name()
        stored = self._stored()
        self._check_identity(stored)
        # A form adding a tenant (the admin's) also refuses a database left behind; save()
        # does not, since adopting one saves a new row for it on purpose.
        self._check_database(stored, new=stored is None)

    @property
    def is_active(self) -> bool:
        return self.status == TenantStatus.ACTIVE

    def _stored(self) -> tuple[str, str, str] | None:
        """The row's slug, server and database name as saved, or ``None`` for a new one."""
        if self._state.adding or self.pk is None:
            return None
        manager = type(self)._default_manager.db_manager(self._state.db)
        fields = ("slug", "server", "database_name")
        stored: tuple[str, str, str] | None = (
            manager.filter(pk=self.pk).values_list(*fields).first()
        )
        return stored

    def _fill_database_name(self) -> None:
        if not self.database_name and isinstance(self.slug, str) and self.slug:
            self.database_name = tenancy_settings.database_name_for(self.slug)

    def _check_identity(self, stored: tuple[str, str, str] | None) -> None:
        stored_slug = stored[0] if stored is not None else None
        if stored_slug is not None and self.slug != stored_slug:
            raise ValidationError(
                {
                    "slug": _(
                        "The slug of tenant %(old)r cannot be changed: it names the tenant's "
                        "database and connection. Create a new tenant instead."
                    )
                    % {"old": stored_slug}
                }
            )
        if self.server not in tenancy_settings.SERVERS:
            raise ValidationError(
                {
                    "server": _(
                        "Server %(server)r is not configured; choose one of "
                        "TENANCY['SERVERS']: %(servers)s."
                    )
                    % {
                        "server": self.server,
                        "servers": ", ".join(sorted(tenancy_settings.SERVERS)),
                    }
                }
            )

    def _check_database(self, stored: tuple[str, str, str] | None, *, new: bool = False) -> None:
        # Unchanged, it was checked when it was set: the change form shows the database
        # name read-only, and an error for a field the form lacks would be a crash.
        if stored is not None and stored[1:] == (self.server, self.database_name):
            return
        checked = self.__dict__.pop("_tenancy_checked_database", None)
        if stored is None and checked == (self.server, self.database_name):
            return
        check_database_name_available(self, new=new)


class Tenant(AbstractTenant):
    class Meta(AbstractTenant.Meta):
        swappable = TENANT_MODEL_SETTING


class Domain(models.Model):
    """A hostname that reaches a tenant; each tenant has at most one primary domain."""

    domain = models.CharField(
        _("domain"),
        max_length=HOSTNAME_MAX_LENGTH,
        unique=True,
        validators=[validate_hostname],
        help_text=_("A hostname without port, e.g. acme.example.com."),
    )
    tenant = models.ForeignKey(
        getattr(settings, TENANT_MODEL_SETTING, DEFAULT_TENANT_MODEL),
        on_delete=models.CASCADE,
        related_name="domains",
        verbose_name=_("tenant"),
    )
    is_primary = models.BooleanField(_("primary"), default=False)

    objects = models.Manager.from_queryset(RegistryQuerySet)()

    class Meta:
        ordering = ["domain"]
        verbose_name = _("domain")
        verbose_name_plural = _("domains")
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"],
                condition=Q(is_primary=True),
                name="tenancy_domain_one_primary_per_tenant",
            )
        ]

    def __str__(self) -> str:
        return self.domain

    def save(self, *args: Any, **kwargs: Any) -> None:
        if isinstance(self.domain, str):
            self.domain = self.domain.lower()
        try:
            # Also refuses a host of the main site, as clean() does: in the registry only,
            # it would never reach the tenant.
            validate_tenant_hostname(self.domain)
        except ValidationError as exc:
            raise ValidationError({"domain": exc}) from None
        super().save(*args, **kwargs)

    def clean(self) -> None:
        super().clean()
        if not is_valid_hostname(self.domain):
            return  # the field's own validator reports it
        try:
            validate_tenant_hostname(self.domain.lower())  # not a host of the main site
        except ValidationError as exc:
            raise ValidationError({"domain": exc}) from None


class Membership(models.Model):
    """A user of the main database who belongs to a tenant. ``is_admin`` members may use
    the tenant's admin site (``tenancy.admin.TenantAdminSite``) on the tenant's domain."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="tenant_memberships",
        verbose_name=_("user"),
    )
    tenant = models.ForeignKey(
        getattr(settings, TENANT_MODEL_SETTING, DEFAULT_TENANT_MODEL),
        on_delete=models.CASCADE,
        related_name="memberships",
        verbose_name=_("tenant"),
    )
    is_admin = models.BooleanField(
        _("tenant admin"),
        default=False,
        help_text=_("May manage the tenant's data in its admin site."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        ordering = ["tenant", "user"]
        verbose_name = _("membership")
        verbose_name_plural = _("memberships")
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="tenancy_membership_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant}"


class MoveStep(models.TextChoices):
    # The tenant is marked moving (reads served from the source, the rest 503); the copy
    # is not made yet.
    PREPARED = "prepared", _("prepared")
    # The copy is being made; the target database may exist, incomplete.
    COPYING = "copying", _("copying")
    # The registry names the target; the source is to be dropped (or kept).
    SWITCHED = "switched", _("switched")


class MoveKind(models.TextChoices):
    # To another server, under the same database name (``tenancy.moving``).
    MOVE = "move", _("move")
    # From a backup into a new database that replaces the tenant's (``tenancy.backups``).
    RESTORE = "restore", _("restore")


class TenantMove(models.Model):
    """A move of a tenant's database to another server in progress (``tenancy.moving``),
    or its replacement by a database restored from a backup (``tenancy.backups``).

    Written before each step, so that running the move again after a crash knows which
    databases are whose: before the switch the source is the tenant's and the target a
    copy to make again or drop; after it, the other way round. Deleted when the move ends.
    """

    tenant = models.OneToOneField(
        getattr(settings, TENANT_MODEL_SETTING, DEFAULT_TENANT_MODEL),
        on_delete=models.PROTECT,  # a tenant is not deleted in the middle of its move
        related_name="+",
        verbose_name=_("tenant"),
    )
    source_server = models.CharField(_("source server"), max_length=63)
    target_server = models.CharField(_("target server"), max_length=63)
    database_name = models.CharField(_("database name"), max_length=DATABASE_NAME_MAX_LENGTH)
    kind = models.CharField(
        _("kind"), max_length=16, choices=MoveKind.choices, default=MoveKind.MOVE
    )
    # The new database's name, when it differs from the source's (a restore's).
    target_database = models.CharField(
        _("target database"), max_length=DATABASE_NAME_MAX_LENGTH, blank=True
    )
    previous_status = models.CharField(_("status before the move"), max_length=16)
    step = models.CharField(_("step"), max_length=16, choices=MoveStep.choices)
    keep_source = models.BooleanField(_("keep the source"), default=False)
    # The source as it was verified against the copy (tables and sequences), recorded at
    # the switch: a source no server keeps writers out of is compared with it again
    # before it is dropped.
    # JSON text (a JSONField would make `manage.py check` query SQLite for JSON support).
    verified = models.TextField(_("verified fingerprint"), blank=True)
    started_at = models.DateTimeField(_("started at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("tenant move")
        verbose_name_plural = _("tenant moves")

    def __str__(self) -> str:
        return f"{self.kind} of tenant {self.tenant_id} to {self.target_server} ({self.step})"

    @property
    def target_name(self) -> str:
        """The database the tenant gets: ``target_database``, else the source's name."""
        return self.target_database or self.database_name


def registry_database() -> str:
    """The alias of the database the registry (tenants, their moves) is written to."""
    return router.db_for_write(get_tenant_model()) or DEFAULT_DB_ALIAS


def get_tenant_model() -> type[AbstractTenant]:
    """The tenant model in use: ``settings.TENANCY_TENANT_MODEL`` or ``tenancy.Tenant``."""
    label = getattr(settings, TENANT_MODEL_SETTING, DEFAULT_TENANT_MODEL)
    try:
        model = apps.get_model(label, require_ready=False)
    except (ValueError, LookupError) as exc:
        raise ImproperlyConfigured(
            f"{TENANT_MODEL_SETTING} refers to {label!r}, which is not an installed model "
            "('app_label.ModelName')."
        ) from exc
    if not issubclass(model, AbstractTenant):
        raise ImproperlyConfigured(
            f"{TENANT_MODEL_SETTING} refers to {label!r}, which does not subclass "
            "tenancy.models.AbstractTenant."
        )
    return model


class TenantLogEntry(models.Model):
    """The tenant an entry of Django's admin log is about.

    ``django.contrib.admin`` keeps its log in the main database and names each object by
    content type and primary key, which objects of different tenants share. Entries
    written on a ``tenancy.admin.TenantAdminSite`` are recorded here with their tenant, so
    that each tenant's admin shows only its own. ``log_entry_id`` is a plain column rather
    than a relation, so that tenancy installs without ``django.contrib.admin``; Django
    never reuses log entry ids.
    """

    log_entry_id = models.BigIntegerField(_("log entry"), unique=True)
    tenant = models.ForeignKey(
        getattr(settings, TENANT_MODEL_SETTING, DEFAULT_TENANT_MODEL),
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name=_("tenant"),
    )

    class Meta:
        verbose_name = _("tenant log entry")
        verbose_name_plural = _("tenant log entries")

    def __str__(self) -> str:
        return f"log entry {self.log_entry_id} of tenant {self.tenant_id}"


class RegistryStamp(models.Model):
    """One row whose ``stamp`` takes a new random value, by a database trigger, in every
    transaction that writes the tenant table or the domain table. Processes read it to know
    when their cached answers of the registry are stale (``tenancy.registry_cache``)."""

    stamp = models.BigIntegerField(_("stamp"))

    class Meta:
        db_table = STAMP_TABLE
        verbose_name = _("registry stamp")

    def __str__(self) -> str:
        return str(self.stamp)


class MigrationSet(models.Model):
    """A set of migrations applied in a tenant database, stored once however many tenants
    have it (a fleet has one or a few): the ledger's tenants point at it."""

    fingerprint = models.CharField(_("fingerprint"), max_length=64, primary_key=True)
    # JSON list of "app.name", sorted (a JSONField would make `manage.py check` query SQLite).
    migrations = models.TextField(_("migrations"))
    count = models.PositiveIntegerField(_("number of migrations"))
    recorded_at = models.DateTimeField(_("recorded at"), auto_now_add=True)

    class Meta:
        verbose_name = _("migration set")
        verbose_name_plural = _("migration sets")

    def __str__(self) -> str:
        return f"{self.count} migrations ({self.fingerprint[:12]})"


class TenantMigrations(models.Model):
    """The ledger: per tenant, the migrations its database had applied when tenancy last
    read or changed them (``tenancy.ledger``), and the error of the last run, if any."""

    tenant = models.OneToOneField(
        getattr(settings, TENANT_MODEL_SETTING, DEFAULT_TENANT_MODEL),
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="+",
        verbose_name=_("tenant"),
    )
    # Null: the database could not be read when it was last tried.
    applied = models.ForeignKey(
        MigrationSet,
        on_delete=models.PROTECT,
        null=True,
        related_name="+",
        verbose_name=_("applied migrations"),
    )
    error = models.TextField(_("last error"), blank=True)
    seconds = models.FloatField(_("seconds the last run took"), default=0.0)
    recorded_at = models.DateTimeField(_("recorded at"))

    class Meta:
        verbose_name = _("tenant migrations")
        verbose_name_plural = _("tenant migrations")

    def __str__(self) -> str:
        return f"migrations of tenant {self.tenant_id}"
