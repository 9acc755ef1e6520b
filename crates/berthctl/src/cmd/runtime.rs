//! `version` and `info`.

use crate::client::Cri;
use crate::output::{print_data, Format};
use anyhow::Result;
use berth_cri_api::v1 as cri;

pub async fn version(c: &mut Cri, o: Format) -> Result<()> {
    let v =
        c.rt.version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await?
        .into_inner();
    if o == Format::Table {
        println!("Version:  {}", v.version);
        println!("RuntimeName:  {}", v.runtime_name);
        println!("RuntimeVersion:  {}", v.runtime_version);
        println!("RuntimeApiVersion:  {}", v.runtime_api_version);
        return Ok(());
    }
    print_data(o, &v)
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Include the runtime's verbose info map
    #[arg(short, long)]
    pub verbose: bool,
}

pub async fn info(c: &mut Cri, o: Format, a: InfoArgs) -> Result<()> {
    let s =
        c.rt.status(cri::StatusRequest { verbose: a.verbose })
            .await?
            .into_inner();
    // The info map holds JSON strings; show them as JSON, not escaped text.
    let info: serde_json::Map<String, serde_json::Value> = s
        .info
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone())),
            )
        })
        .collect();
    let conds = s
        .status
        .as_ref()
        .map(|st| st.conditions.clone())
        .unwrap_or_default();
    if o == Format::Table {
        let mut t = crate::output::Table::new(&["CONDITION", "STATUS", "REASON", "MESSAGE"]);
        for c in &conds {
            t.row(vec![
                c.r#type.clone(),
                c.status.to_string(),
                c.reason.clone(),
                c.message.clone(),
            ]);
        }
        t.print();
        if !info.is_empty() {
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        return Ok(());
    }
    print_data(o, &serde_json::json!({"status": s.status, "info": info}))
}
