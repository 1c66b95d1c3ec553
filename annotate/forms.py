"""Forms for the annotator pages (the ranking itself travels as JSON, validated by the services)."""

from django import forms
from django.contrib.auth import get_user_model

from annotate.models import Project
from training.rlhf.chat_format import PromptFormat, PromptFormatError

SKIP_REASONS = [
    ("unclear_prompt", "The prompt is unclear or broken"),
    ("no_expertise", "I can't judge this (needs expertise I don't have)"),
    ("unreadable", "The responses are unreadable or empty"),
    ("sensitive", "Content I should not or will not review"),
    ("other", "Other (say why below)"),
]


class SkipForm(forms.Form):
    reason_choice = forms.ChoiceField(choices=SKIP_REASONS, label="Why skip?")
    reason_text = forms.CharField(
        required=False, max_length=900, label="Details", widget=forms.TextInput(attrs={"autocomplete": "off"})
    )

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("reason_choice") == "other" and not (cleaned.get("reason_text") or "").strip():
            self.add_error("reason_text", "Say why you skip this prompt.")
        return cleaned

    def reason(self) -> str:
        label = dict(SKIP_REASONS)[self.cleaned_data["reason_choice"]]
        text = (self.cleaned_data.get("reason_text") or "").strip()
        if self.cleaned_data["reason_choice"] == "other":
            return text
        return f"{label}: {text}" if text else label


def form_errors(form: forms.Form) -> dict[str, list[str]]:
    """A form's errors as {field: [message, …]}, the shape the services' ValidationErrors have."""
    return {field: [e["message"] for e in errs] for field, errs in form.errors.get_json_data().items()}


# --- The project wizard (staff) ---------------------------------------------------------------------------------


class ProjectForm(forms.ModelForm):
    """Step 1 of the wizard: the project's settings (all editable later in the admin)."""

    class Meta:
        model = Project
        fields = ["name", "description", "task_types", "demonstration_start", "k_min", "k_max",
                  "annotators_per_prompt", "lease_minutes", "prompt_format", "system_prompt", "render_markdown"]
        labels = {"k_min": "K min (responses per prompt)", "k_max": "K max", "render_markdown":
                  "Show model output as Markdown"}
        help_texts = {"k_min": "Prompts are offered once they have this many responses (4–9).",
                      "k_max": "The most responses a prompt may have (4–9)."}
        widgets = {"description": forms.Textarea(attrs={"rows": 2}), "system_prompt": forms.Textarea(attrs={"rows": 2})}

    def clean(self):
        cleaned = super().clean()
        k_min, k_max = cleaned.get("k_min"), cleaned.get("k_max")
        if k_min is not None and k_max is not None and k_min > k_max:
            self.add_error("k_max", "K max must be at least K min.")
        try:  # the same rules every stage applies (training.rlhf.chat_format)
            PromptFormat(kind=cleaned.get("prompt_format") or "plain", system_prompt=cleaned.get("system_prompt") or "")
        except PromptFormatError as exc:
            self.add_error("system_prompt", str(exc))
        return cleaned


class GuidelinesForm(forms.Form):
    guidelines = forms.CharField(
        required=False, max_length=100_000, widget=forms.Textarea(attrs={"rows": 8}),
        help_text="Markdown. Annotators see it before their first task and one click away on every task; "
        "changing written guidelines bumps their version (each ranking records the version it saw).",
    )


class AnnotatorsForm(forms.Form):
    users = forms.ModelMultipleChoiceField(
        queryset=None, widget=forms.CheckboxSelectMultiple, label="Annotators",
        help_text="They see the project on their home page and can start ranking.",
    )

    def __init__(self, *args, project: Project, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["users"].queryset = get_user_model().objects.filter(is_active=True).order_by("username")
        self.fields["users"].initial = list(project.annotators.values_list("pk", flat=True))
