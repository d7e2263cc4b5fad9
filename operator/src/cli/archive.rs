//! The commands that read an archive: `export`, `verify` and `list`. None of them creates
//! or changes anything in the archive.

use std::io::IsTerminal;

use super::logging::{say, Say};
use super::{invalid, ExportArgs, Failure, ListArgs, StoreArgs};
use crate::export::{self, ExportError};
use crate::store;

pub(super) async fn export(args: ExportArgs) -> Result<u8, Failure> {
    let to_stdout = args.out.as_os_str() == "-";
    if args.wait_for_attach && !to_stdout {
        return Err(invalid("--wait-for-attach is for --out - only"));
    }
    if to_stdout && std::io::stdout().is_terminal() {
        return Err(invalid(
            "--out - writes an archive to standard output, which is a terminal; \
             redirect it to a file or a pipe",
        ));
    }
    let archive = args.store.existing().await?;
    let request = export::Request {
        user: &args.user,
        format: args.format,
        folder: args.folder.as_deref(),
    };
    let summary = if to_stdout {
        if args.wait_for_attach {
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
                .map_err(|e| Failure(1, format!("reading standard input: {e}")))?;
        }
        let mut stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        export::export_to(&archive, &request, export::Destination::Stream(&mut stdout)).await
    } else {
        let destination = export::Destination::Directory(&args.out);
        export::export_to(&archive, &request, destination).await
    };
    let summary = summary.map_err(|e| match e {
        ExportError::NoSuchUser { .. }
        | ExportError::NoSuchFolder { .. }
        | ExportError::NotEmpty(_) => invalid(e.to_string()),
        other => Failure(1, other.to_string()),
    })?;
    for r in &summary.renamed {
        let note = format!(
            "folder {:?} of {} exported as {} (its own name is another \
             folder's, or looks like a message or mbox file)",
            r.folder, r.mailbox, r.path
        );
        say(Say::Note, &note);
    }
    let line = format!(
        "exported {} messages in {} folders to {}",
        summary.messages,
        summary.folders,
        match to_stdout {
            true => "standard output".to_string(),
            false => args.out.display().to_string(),
        }
    );
    // On standard output only the archive; the summary goes to stderr then.
    match to_stdout {
        true => say(Say::Done, &line),
        false => println!("{line}"),
    }
    Ok(0)
}

pub(super) async fn verify(args: StoreArgs) -> Result<u8, Failure> {
    let report = args
        .existing()
        .await?
        .verify()
        .await
        .map_err(|e| Failure(1, e.to_string()))?;
    for line in &report.damaged {
        println!("DAMAGED {line}");
    }
    println!(
        "{} messages, {} index entries checked, {} problems",
        report.messages,
        report.entries,
        report.damaged.len()
    );
    Ok(u8::from(!report.damaged.is_empty()))
}

pub(super) async fn list(args: ListArgs) -> Result<u8, Failure> {
    let archive = args.store.existing().await?;
    let failed = |e: store::StoreError| Failure(1, e.to_string());
    let mut out = String::new();
    for user in archive.users().await.map_err(failed)? {
        let wanted = args.user.as_ref();
        if wanted.is_some_and(|u| !u.eq_ignore_ascii_case(&user.name)) {
            continue;
        }
        out.push_str(&format!("{}\n", user.name));
        for (label, folder) in archive.user_folders(&user.name).await.map_err(failed)? {
            let entries = archive.folder_entries(&folder).await.map_err(failed)?;
            let bytes: u64 = entries.iter().map(|e| e.size).sum();
            out.push_str(&format!(
                "  {label}/{}  {} messages, {bytes} bytes\n",
                folder.folder,
                entries.len()
            ));
        }
    }
    print!("{out}");
    Ok(0)
}
