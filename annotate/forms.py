"""Forms for the annotator pages (the ranking itself travels as JSON, validated by the services)."""

from django import forms

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
