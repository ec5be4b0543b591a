"""Objects loaded in one tenant are refused in queries on another tenant's database.

alpha and beta each hold a note with the same primary key, and a tag on it, so a query
that took alpha's note for beta's would read or change beta's rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When, prefetch_related_objects

from tenancy import CrossTenantError, tenant_context
from tenancy.connections import alias_for, unregister
from tenancy.models import Tenant
from tests.tenantapp.models import Attachment, Label, Note, Tag

PK = 7  # alpha's and beta's note both have it
OTHER_PK = 8  # a second note of beta's


@pytest.fixture
def alpha_note(alpha: Tenant, beta: Tenant) -> Note:
    """alpha's note (with tag "alpha tag"), loaded in alpha; beta has note PK with tag
    "beta tag" and note OTHER_PK with tag "beta other tag"."""
    with tenant_context(alpha):
        Tag.objects.create(note=Note.objects.create(pk=PK, text="alpha's"), label="alpha tag")
    with tenant_context(beta):
        Tag.objects.create(note=Note.objects.create(pk=PK, text="beta's"), label="beta tag")
        other = Note.objects.create(pk=OTHER_PK, text="beta's other")
        Tag.objects.create(note=other, label="beta other tag")
    with tenant_context(alpha):
        return Note.objects.get(pk=PK)


@pytest.fixture
def alpha_tag(alpha: Tenant, alpha_note: Note) -> Tag:
    with tenant_context(alpha):
        return Tag.objects.get(label="alpha tag")


def beta_rows(beta: Tenant) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with tenant_context(beta):
        notes = list(Note.objects.order_by("pk").values_list("pk", "text"))
        tags = list(Tag.objects.order_by("pk").values_list("note_id", "label"))
    return notes, tags


BETA_ROWS = (
    [(PK, "beta's"), (OTHER_PK, "beta's other")],
    [(PK, "beta tag"), (OTHER_PK, "beta other tag")],
)


def test_the_error_names_the_object_both_tenants_and_the_fix(alpha_note, beta):
    with tenant_context(beta), pytest.raises(CrossTenantError) as raised:
        list(Tag.objects.filter(note=alpha_note))
    assert str(raised.value) == (
        f"tenantapp.Note object {PK} was loaded from tenant 'alpha' but tenant 'beta' is "
        "active. Use objects of a tenant only inside that tenant's context."
    )


def in_beta(beta: Tenant, work: Callable[[], object]) -> object:
    """What ``work`` returns in tenant beta, or the CrossTenantError it raises there."""
    with tenant_context(beta):
        try:
            return work()
        except CrossTenantError as error:
            return error


async def awaited(*works: Awaitable[object]) -> list[object]:
    """What each of ``works`` gives, or the CrossTenantError it raises, awaited in turn."""
    outcomes: list[object] = []
    for work in works:
        try:
            outcomes.append(await work)
        except CrossTenantError as error:
            outcomes.append(error)
    return outcomes


def refused(outcome: object) -> bool:
    return isinstance(outcome, CrossTenantError) and "but tenant 'beta' is active" in str(outcome)


def test_bulk_update_of_another_tenants_object_is_refused(alpha_note, beta):
    alpha_note.text = "changed"
    outcome = in_beta(beta, lambda: Note.objects.bulk_update([alpha_note], ["text"]))
    assert beta_rows(beta) == BETA_ROWS
    assert refused(outcome)


def test_bulk_create_upserting_another_tenants_object_is_refused(alpha_note, beta):
    alpha_note.text = "changed"
    outcome = in_beta(
        beta,
        lambda: Note.objects.bulk_create(
            [alpha_note], update_conflicts=True, unique_fields=["id"], update_fields=["text"]
        ),
    )
    assert beta_rows(beta) == BETA_ROWS
    assert refused(outcome)


def test_bulk_create_of_another_tenants_object_is_refused(alpha_note, beta):
    with tenant_context(beta):
        Note.objects.filter(pk=PK).delete()
    outcome = in_beta(beta, lambda: Note.objects.bulk_create([alpha_note]))
    assert beta_rows(beta) == ([(OTHER_PK, "beta's other")], [(OTHER_PK, "beta other tag")])
    assert refused(outcome)


def test_bulk_create_of_a_tag_made_in_another_tenant_is_refused(alpha, alpha_note, beta):
    with tenant_context(alpha):
        tag = Tag(note=alpha_note, label="made in alpha")
    outcome = in_beta(beta, lambda: Tag.objects.bulk_create([tag]))
    assert beta_rows(beta) == BETA_ROWS
    assert refused(outcome)


READS: dict[str, Callable[[Note, Tag], object]] = {
    "filter": lambda note, tag: list(Tag.objects.filter(note=note)),
    "in": lambda note, tag: list(Tag.objects.filter(note__in=[note])),
    "in, a set": lambda note, tag: list(Tag.objects.filter(note__in={note})),
    "Q": lambda note, tag: list(Tag.objects.filter(Q(label="none") | Q(note=note))),
    "exclude": lambda note, tag: list(Tag.objects.exclude(note=note)),
    "get": lambda note, tag: Tag.objects.get(note=note),
    "count": lambda note, tag: Tag.objects.filter(note=note).count(),
    "exists": lambda note, tag: Tag.objects.filter(note=note).exists(),
    "values": lambda note, tag: list(Tag.objects.filter(note=note).values("label")),
    "related lookup": lambda note, tag: list(Note.objects.filter(tags__note__in=[note])),
    "reverse relation": lambda note, tag: list(Note.objects.filter(tags=tag)),
    "reverse relation, exclude": lambda note, tag: list(Note.objects.exclude(tags=tag)),
    "combined querysets": lambda note, tag: list(
        Tag.objects.filter(label="none") | Tag.objects.filter(note=note)
    ),
    "subquery": lambda note, tag: list(
        Note.objects.filter(Exists(Tag.objects.filter(note=OuterRef("pk"), note__in=[note])))
    ),
    "condition in an expression": lambda note, tag: list(
        Tag.objects.annotate(mine=Case(When(note=note, then=Value(True)), default=Value(False)))
    ),
}


@pytest.mark.parametrize("query", READS.values(), ids=READS.keys())
def test_filtering_by_another_tenants_object_is_refused(alpha_note, alpha_tag, beta, query):
    outcome = in_beta(beta, lambda: query(alpha_note, alpha_tag))
    assert refused(outcome), f"beta's rows were read: {outcome!r}"


WRITES: dict[str, Callable[[Note], object]] = {
    "update value": lambda note: Tag.objects.update(note=note),
    "update of a filtered queryset": lambda note: Tag.objects.filter(note=note).update(
        label="changed"
    ),
    "update with a condition": lambda note: Tag.objects.update(
        label=Case(When(note=note, then=Value("changed")), default=F("label"))
    ),
    "delete of a filtered queryset": lambda note: Tag.objects.filter(note=note).delete(),
    "get_or_create": lambda note: Tag.objects.get_or_create(note=note, label="beta tag"),
    "save": lambda note: note.save(),
    "delete": lambda note: note.delete(),
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_writing_with_another_tenants_object_is_refused(alpha_note, beta, write):
    alpha_note.text = "changed"
    outcome = in_beta(beta, lambda: write(alpha_note))
    assert beta_rows(beta) == BETA_ROWS
    assert refused(outcome), outcome


def test_the_async_queryset_methods_refuse_another_tenants_object(alpha_note, beta):
    alpha_note.text = "changed"

    async def write() -> list[object]:
        async with tenant_context(beta):
            return await awaited(
                Note.objects.abulk_update([alpha_note], ["text"]),
                Tag.objects.filter(note=alpha_note).aupdate(label="changed"),
            )

    outcomes = asyncio.run(write())
    assert beta_rows(beta) == BETA_ROWS
    assert all(refused(outcome) for outcome in outcomes), outcomes


def test_objects_work_in_their_own_tenant(alpha, alpha_note, beta):
    with tenant_context(alpha):
        assert [t.label for t in Tag.objects.filter(note__in=[alpha_note])] == ["alpha tag"]
        alpha_note.text = "bulk updated"
        Note.objects.bulk_update([alpha_note], ["text"])
        alpha_note.text = "upserted"
        Note.objects.bulk_create(
            [alpha_note], update_conflicts=True, unique_fields=["id"], update_fields=["text"]
        )
        assert Tag.objects.update(note=alpha_note) == 1
        assert [n.tags.count() for n in Note.objects.prefetch_related("tags")] == [1]
        alpha_note.delete()
        assert (Note.objects.count(), Tag.objects.count()) == (0, 0)
    assert beta_rows(beta) == BETA_ROWS


def test_objects_can_be_used_with_their_own_tenants_database_explicitly(alpha, alpha_note, beta):
    with tenant_context(beta):
        tags = Tag.objects.filter(note=alpha_note).using(alias_for(alpha))
        assert [t.label for t in tags] == ["alpha tag"]


def test_unsaved_and_hand_made_objects_are_allowed(alpha_note, beta):
    with tenant_context(beta):
        by_hand = Note(pk=PK, text="by hand")
        assert [t.label for t in Tag.objects.filter(note=by_hand)] == ["beta tag"]
        Note.objects.bulk_update([by_hand], ["text"])
        Note.objects.bulk_create([Note(text="new")])
        assert Tag.objects.filter(note=OTHER_PK).update(note=by_hand) == 1
        assert sorted(Note.objects.values_list("text", flat=True)) == [
            "beta's other",
            "by hand",
            "new",
        ]
        assert list(Tag.objects.values_list("note_id", flat=True)) == [PK, PK]


def test_objects_stay_their_tenants_when_it_is_registered_again(alpha, alpha_note, alpha_tag):
    # A tenant registered again (migrated, its server changed, ...) gets a new alias;
    # what was loaded under the old one is still the tenant's own.
    with tenant_context(alpha):
        old_alias = alias_for(alpha)
        unregister(alpha)
        assert alias_for(alpha) != old_alias == alpha_note._state.db
        alpha_note.text = "renamed"
        Note.objects.bulk_update([alpha_note], ["text"])
        assert list(Tag.objects.filter(note=alpha_note).values_list("label", flat=True)) == [
            "alpha tag"
        ]
        alpha_tag.note = alpha_note
        alpha_tag.save()
        assert Note.objects.get(pk=PK).text == "renamed"


LABEL_PK = 3  # alpha's and beta's label, each on the tenant's note PK
ATTACHMENT_PK = 5  # alpha's and beta's attachment, each on the tenant's note PK


@pytest.fixture
def alpha_related(alpha: Tenant, beta: Tenant, alpha_note: Note) -> Iterator[dict[str, Any]]:
    """alpha's note, tag, label and attachment, loaded in alpha; beta has a label and an
    attachment with the same primary keys on its note PK."""
    for tenant in (alpha, beta):
        with tenant_context(tenant):
            note = Note.objects.get(pk=PK)
            Label.objects.create(pk=LABEL_PK, name=f"{tenant.slug} label").notes.add(note)
            Attachment.objects.create(pk=ATTACHMENT_PK, name=f"{tenant.slug} file", note=note)
    with tenant_context(alpha):
        objects = {
            "note": alpha_note,
            "tag": Tag.objects.get(),
            "label": Label.objects.get(),
            "attachment": Attachment.objects.get(),
        }
    yield objects
    for tenant in (alpha, beta):  # the test databases' cleanup knows notes and tags only
        with tenant_context(tenant):
            Label.objects.all().delete()
            Attachment.objects.all().delete()


def beta_links(beta: Tenant) -> tuple[list[tuple[Any, ...]], ...]:
    with tenant_context(beta):
        labels = list(Label.notes.through.objects.values_list("label_id", "note_id"))
        attachments = list(Attachment.objects.values_list("pk", "note_id"))
        tags = list(Tag.objects.order_by("pk").values_list("note_id", "label"))
    return labels, attachments, tags


BETA_LINKS = ([(LABEL_PK, PK)], [(ATTACHMENT_PK, PK)], BETA_ROWS[1])


def _beta(model: type[Any]) -> Any:
    return model.objects.get(pk=PK if model is Note else LABEL_PK)


MANAGERS: dict[str, Callable[[dict[str, Any]], object]] = {
    "many-to-many add": lambda a: _beta(Label).notes.add(a["note"]),
    "many-to-many remove": lambda a: _beta(Label).notes.remove(a["note"]),
    "many-to-many set": lambda a: _beta(Label).notes.set([a["note"]]),
    "many-to-many set, clear": lambda a: _beta(Label).notes.set([a["note"]], clear=True),
    "reverse many-to-many add": lambda a: _beta(Note).labels.add(a["label"]),
    "reverse many-to-many remove": lambda a: _beta(Note).labels.remove(a["label"]),
    "reverse many-to-many set": lambda a: _beta(Note).labels.set([a["label"]]),
    "reverse foreign key add": lambda a: _beta(Note).tags.add(a["tag"]),
    "reverse foreign key set": lambda a: _beta(Note).tags.set([a["tag"]]),
    "reverse nullable foreign key add": lambda a: _beta(Note).attachments.add(a["attachment"]),
    "reverse nullable foreign key remove": lambda a: _beta(Note).attachments.remove(
        a["attachment"]
    ),
    "reverse nullable foreign key set": lambda a: _beta(Note).attachments.set([a["attachment"]]),
}


@pytest.mark.parametrize("change", MANAGERS.values(), ids=MANAGERS.keys())
def test_related_managers_refuse_another_tenants_object(alpha_related, beta, change):
    outcome = in_beta(beta, lambda: change(alpha_related))
    assert beta_links(beta) == BETA_LINKS
    assert refused(outcome), outcome


def test_the_async_related_manager_methods_refuse_another_tenants_object(alpha_related, beta):
    async def change() -> list[object]:
        async with tenant_context(beta):
            label = await Label.objects.aget()
            note = await Note.objects.aget(pk=PK)
            return await awaited(
                label.notes.aremove(alpha_related["note"]),
                label.notes.aset([alpha_related["note"]]),
                note.attachments.aremove(alpha_related["attachment"]),
            )

    outcomes = asyncio.run(change())
    assert beta_links(beta) == BETA_LINKS
    assert all(refused(outcome) for outcome in outcomes), outcomes


def test_related_managers_work_in_their_own_tenant(alpha, alpha_related, beta):
    with tenant_context(alpha):
        note, label = alpha_related["note"], alpha_related["label"]
        other = Note.objects.create(text="alpha's other")
        label.notes.set([other])
        assert list(label.notes.values_list("text", flat=True)) == ["alpha's other"]
        note.labels.add(label)
        label.notes.remove(other)
        note.attachments.remove(alpha_related["attachment"])
        note.attachments.set([Attachment.objects.create(name="new")])
        other.tags.add(alpha_related["tag"])
        assert list(Label.notes.through.objects.values_list("note_id", flat=True)) == [PK]
        assert list(Attachment.objects.order_by("name").values_list("name", "note_id")) == [
            ("alpha file", None),
            ("new", PK),
        ]
        assert list(Tag.objects.values_list("note_id", flat=True)) == [other.pk]
    assert beta_links(beta) == BETA_LINKS


def test_prefetching_for_objects_of_two_tenants_is_refused(alpha, alpha_tag, beta):
    with tenant_context(beta):
        beta_tag = Tag.objects.get(label="beta other tag")
    outcome = in_beta(beta, lambda: prefetch_related_objects([beta_tag, alpha_tag], "note"))
    with tenant_context(alpha):  # otherwise alpha's tag would hold beta's note PK
        assert alpha_tag.note.text == "alpha's"
    assert refused(outcome), outcome


def test_prefetching_for_objects_of_one_tenant_works(alpha, alpha_tag, beta):
    with tenant_context(beta):
        tags = list(Tag.objects.all())
        prefetch_related_objects(tags, "note")
        assert [tag.note.text for tag in tags] == ["beta's", "beta's other"]


def test_an_evaluated_raw_queryset_of_another_tenant_is_refused_as_in_value(
    alpha, alpha_note, beta
):
    with tenant_context(alpha):
        raw = Note.objects.raw("SELECT * FROM tenantapp_note")
        assert [note.text for note in raw] == ["alpha's"]
    outcome = in_beta(beta, lambda: [tag.label for tag in Tag.objects.filter(note__in=raw)])
    assert refused(outcome), f"beta's rows were read: {outcome!r}"


def test_refresh_from_another_tenants_queryset_is_refused(alpha_note, beta):
    outcome = in_beta(beta, lambda: alpha_note.refresh_from_db(from_queryset=Note.objects.all()))
    assert alpha_note.text == "alpha's"
    assert refused(outcome), outcome


def test_refresh_for_update_from_another_tenants_queryset_is_refused(alpha_note, beta):
    def refresh() -> None:
        with transaction.atomic(using=alias_for(beta)):
            alpha_note.refresh_from_db(from_queryset=Note.objects.select_for_update())

    outcome = in_beta(beta, refresh)
    assert alpha_note.text == "alpha's"
    assert refused(outcome), outcome


def test_refresh_from_a_queryset_works_in_the_objects_tenant(alpha, alpha_note, beta):
    with tenant_context(alpha):
        Note.objects.filter(pk=PK).update(text="changed in alpha")
        alpha_note.refresh_from_db(from_queryset=Note.objects.all())
        assert alpha_note.text == "changed in alpha"
    with tenant_context(beta):
        alpha_note.refresh_from_db(from_queryset=Note.objects.using(alias_for(alpha)))
        assert alpha_note.text == "changed in alpha"
