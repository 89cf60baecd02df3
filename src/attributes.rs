//! The attribute engine (pure domain, no HTTP): databases, series and the deterministic
//! selection that turns an address or seed into a [`dress::DalleDress`].

pub mod database;
pub mod dress;
pub mod selection;
pub mod series;

use std::path::{Path, PathBuf};

use database::{DatabaseError, Databases};
use dress::DalleDress;
use series::{Series, SeriesStore};

/// Failures while building the attribute engine.
#[derive(Debug, thiserror::Error)]
pub enum AttributesError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Builtin(#[from] series::BuiltinError),
}

/// Failures while dressing an input.
#[derive(Debug, thiserror::Error)]
pub enum DressError {
    #[error("series not found: {0}")]
    SeriesNotFound(String),
    #[error(transparent)]
    Selection(#[from] selection::SelectionError),
    #[error(transparent)]
    Prompt(#[from] crate::prompts::PromptError),
}

/// Databases plus series: everything needed to dress an input.
#[derive(Debug, Clone)]
pub struct Attributes {
    pub databases: Databases,
    pub series: SeriesStore,
}

impl Attributes {
    /// Embedded databases, or the CSVs in `databases_dir` when given.
    pub fn load(
        databases_dir: Option<&Path>,
        user_series: PathBuf,
    ) -> Result<Attributes, AttributesError> {
        let databases = match databases_dir {
            Some(dir) => Databases::from_dir(dir)?,
            None => Databases::embedded(),
        };
        Ok(Attributes {
            databases,
            series: SeriesStore::new(user_series)?,
        })
    }

    /// The dress for `original` under the series `name`, with its prompts rendered.
    pub fn dress(
        &self,
        original: &str,
        name: &str,
        backstyle: Option<&str>,
    ) -> Result<(DalleDress, crate::prompts::Prompts), DressError> {
        let series = self
            .series
            .get(name)
            .ok_or_else(|| DressError::SeriesNotFound(name.to_string()))?;
        self.dress_in(original, &series, backstyle)
    }

    /// The dress for `original` under an already loaded series.
    pub fn dress_in(
        &self,
        original: &str,
        series: &Series,
        backstyle: Option<&str>,
    ) -> Result<(DalleDress, crate::prompts::Prompts), DressError> {
        let mut dress = selection::make_dress(original, series, &self.databases, backstyle)?;
        let prompts = crate::prompts::render(&dress)?;
        prompts.apply_to(&mut dress);
        Ok((dress, prompts))
    }
}
