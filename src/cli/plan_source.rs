//! A plan problem shown under the plan's own line, with the key underlined, the way
//! miette renders labelled source spans.

/// The plan's line under a problem, with the key underlined (miette's rendering).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{key}")]
struct InSource {
    key: String,
    #[source_code]
    src: miette::NamedSource<String>,
    #[label("{message}")]
    at: miette::SourceSpan,
    message: String,
}

pub(super) fn show_in_source(p: &crate::error::PlanProblem) {
    let (Some(loc), Ok(text)) = (&p.location, std::fs::read_to_string(&p.file)) else {
        return;
    };
    if text.trim().is_empty() {
        return; // an empty file has no line to show
    }
    let offset: usize = text
        .lines()
        .take(loc.line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum::<usize>()
        + loc.column.saturating_sub(1);
    if offset > text.len() {
        return;
    }
    let len = text[offset..]
        .find([':', '\n', ',', '}'])
        .unwrap_or(0)
        .max(1);
    let report = miette::Report::new(InSource {
        key: if p.key.is_empty() {
            "here".into()
        } else {
            p.key.clone()
        },
        src: miette::NamedSource::new(&p.file, text.clone()),
        at: (offset, len).into(),
        message: p.message.clone(),
    });
    eprintln!("{report:?}");
}
